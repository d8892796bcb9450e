//! What the commands share: printing to a closed pipe, times, bytes as text, bars.

/// A UTC date and time from nanoseconds since the Unix epoch.
pub fn time(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        nanos / 1_000_000 % 1000
    )
}

/// Bytes as text if they are UTF-8 without control characters, else as hex; long ones cut.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 160;
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let cut: String = s.chars().take(MAX).collect();
            if cut.len() < s.len() { format!("{cut}... ({} bytes)", bytes.len()) } else { cut }
        }
        _ => {
            let hex: String = bytes.iter().take(MAX / 2).map(|b| format!("{b:02x}")).collect();
            if bytes.len() > MAX / 2 { format!("0x{hex}... ({} bytes)", bytes.len()) } else { format!("0x{hex}") }
        }
    }
}

pub fn bar(n: u64, max: u64, width: usize) -> String {
    let len = if max == 0 { 0 } else { ((n as f64 / max as f64) * width as f64).round() as usize };
    "#".repeat(len)
}
