//! `strata load --report DIR` (feature `report`): DIR/index.html, one self-contained page
//! (no script, no external file) with the run's parameters, the text report, and SVG plots
//! drawn by plotters from the sampled [`Series`].

use std::error::Error;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{BALANCES_SLA, LoadArgs, PROJECTIONS, Report, Series};

type Res<T> = Result<T, Box<dyn Error>>;

/// Every plot's size in pixels.
const SIZE: (u32, u32) = (1000, 310);
/// Room on the right of each plot for its legend, outside the data (which may be anywhere).
const LEGEND_WIDTH: u32 = 190;
/// Lag is drawn on a log scale; a projection caught up (lag 0) is drawn here, in ms.
const LAG_FLOOR_MS: f64 = 0.1;

/// The plots' titles, in page order (the tests look for them).
pub const TITLES: [&str; 6] = [
    "Throughput: events/s",
    "Command latency per interval",
    "Command latency histogram",
    "Projection lag against the SLA",
    "Read model cache hit ratio",
    "Compaction and archive bytes",
];

/// One line of a plot; a point whose y is NaN is a gap (an interval without commands or
/// reads), where the line breaks.
struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn new(label: impl Into<String>, color: RGBColor) -> Line {
        Line { label: label.into(), color, points: Vec::new() }
    }
}

const BLUE_: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN_: RGBColor = RGBColor(44, 160, 44);
const RED_: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// Writes `out/index.html` (creating `out`); returns its path.
pub fn write(out: &Path, args: &LoadArgs, report: &Report, series: &Series) -> Res<PathBuf> {
    let page = page(args, report, series)?;
    std::fs::create_dir_all(out).map_err(|e| format!("--report {}: {e}", out.display()))?;
    let path = out.join("index.html");
    std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn page(args: &LoadArgs, report: &Report, series: &Series) -> Res<String> {
    let samples = &series.samples;
    let x_end = samples.last().map_or(0.0, |s| s.at.as_secs_f64()).max(1e-3);
    let ms = |micros: u64| micros as f64 / 1000.0;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;

    let mut rate = Line::new("events/s", BLUE_);
    let mut p50 = Line::new("p50", BLUE_);
    let mut p99 = Line::new("p99", ORANGE);
    let mut max = Line::new("max", RED_);
    let mut lags = [Line::new(PROJECTIONS[0], BLUE_), Line::new(PROJECTIONS[1], GREEN_)];
    let mut hits = Line::new("hit ratio", PURPLE);
    let mut compacted = Line::new("segments compacted (MiB)", BLUE_);
    let mut archived = Line::new("archives written (MiB)", ORANGE);
    compacted.points.push((0.0, 0.0));
    archived.points.push((0.0, 0.0));
    let (mut t0, mut events0, mut hits0, mut misses0) = (0.0, 0, 0, 0);
    for s in samples {
        let t = s.at.as_secs_f64();
        if t > t0 {
            rate.points.push((t, (s.events - events0) as f64 / (t - t0)));
        }
        let l = &s.latency;
        let at = |q: f64| if l.is_empty() { f64::NAN } else { ms(l.value_at_quantile(q)) };
        p50.points.push((t, at(0.5)));
        p99.points.push((t, at(0.99)));
        max.points.push((t, if l.is_empty() { f64::NAN } else { ms(l.max()) }));
        for (line, lag) in lags.iter_mut().zip(s.lag) {
            line.points.push((t, (lag.as_secs_f64() * 1000.0).max(LAG_FLOOR_MS)));
        }
        let (h, m) = (s.cache_hits - hits0, s.cache_misses - misses0);
        hits.points.push((t, if h + m > 0 { 100.0 * h as f64 / (h + m) as f64 } else { f64::NAN }));
        compacted.points.push((t, mib(s.compacted_bytes)));
        archived.points.push((t, mib(s.archive_bytes)));
        (t0, events0, hits0, misses0) = (t, s.events, s.cache_hits, s.cache_misses);
    }

    let top = |lines: &[&Line]| lines.iter().flat_map(|l| &l.points).map(|p| p.1).fold(0.0, f64::max);
    let mut plots = Vec::new();
    let y = 0.0..(top(&[&rate]) * 1.1).max(1.0);
    plots.push((
        line_chart(TITLES[0], "events/s", x_end, y, &[rate])?,
        format!(
            "Events acknowledged (durable) per second in each interval. Whole run: {:.0} events/s.",
            report.events_per_sec()
        ),
    ));

    let low = p50.points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let low = if low.is_finite() { low } else { ms(report.latency.min().max(1)) };
    let y = decade_below(low)..decade_above(top(&[&max]).max(0.01) * 1.2);
    // The maximum first: with few commands in an interval, p99 is the maximum and is drawn over it.
    plots.push((
        line_chart(TITLES[1], "ms (log scale)", x_end, y.log_scale(), &[max, p99, p50])?,
        format!(
            "Of the commands that finished in each interval (load + decide + durable append). Whole run: p50 {:.3} ms, \
         p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms.",
            report.latency_ms(0.5),
            report.latency_ms(0.99),
            report.latency_ms(0.999),
            report.max_latency_ms()
        ),
    ));

    plots.push((
        latency_histogram(report)?,
        format!(
            "All {} commands of the run, 10 bins per decade; the vertical lines mark p50, p99, p99.9 and the maximum.",
            report.latency.len()
        ),
    ));

    let sla_ms = BALANCES_SLA.as_secs_f64() * 1000.0;
    let mut sla = Line::new(format!("SLA of {}: {:.0} s", PROJECTIONS[0], BALANCES_SLA.as_secs_f64()), RED_);
    sla.points = vec![(0.0, sla_ms), (x_end, sla_ms)];
    let [balances, activity] = lags;
    let y = LAG_FLOOR_MS..decade_above((top(&[&balances, &activity]) * 1.5).max(sla_ms * 2.0));
    plots.push((
        line_chart(TITLES[3], "lag, ms (log scale)", x_end, y.log_scale(), &[balances, activity, sla])?,
        format!(
            "The largest lag of each projection in each interval: the age of its oldest unhandled event (one caught \
             up is drawn at {LAG_FLOOR_MS} ms). {} is critical: past its SLA the bus holds commands back. Largest \
             lag of the run: {:.1} ms ({} events).",
            PROJECTIONS[0],
            report.lag.time.as_secs_f64() * 1000.0,
            report.lag.events
        ),
    ));

    plots.push((
        line_chart(TITLES[4], "hits, % of reads", x_end, 0.0..100.0, &[hits])?,
        format!(
            "Hits / (hits + misses) of the balances read model's cache in each interval (a reader favours 200 hot \
         accounts; each event handled invalidates its account). Whole run: {:.1} % ({} hits, {} misses).",
            report.cache.hit_ratio() * 100.0,
            report.cache.hits,
            report.cache.misses
        ),
    ));

    let y = 0.0..(top(&[&compacted, &archived]) * 1.15).max(1.0);
    let a = &report.archives;
    let after = match a.ratio() {
        Some(r) => format!(
            "{} archives holding {} events: {:.1} MiB of batches in {:.1} MiB of archives, ratio {r:.2}",
            a.archives,
            a.events,
            mib(a.batch_bytes),
            mib(a.file_bytes)
        ),
        None => "no archives (no sealed segment was snapshotted past yet)".to_owned(),
    };
    plots.push((
        line_chart(TITLES[5], "MiB, total", x_end, y, &[compacted, archived])?,
        format!(
            "Totals of the background compactions while the load ran (every {} s; events archivable after {} s, \
         their accounts snapshotted past them or cold). After the load and a last compaction: {after}.",
            args.compact_every, args.retention
        ),
    ));

    Ok(html(args, report, series, &plots))
}

/// The power of ten at or under `v` (> 0).
fn decade_below(v: f64) -> f64 {
    10f64.powf(v.max(1e-6).log10().floor())
}

/// The power of ten at or over `v` (> 0).
fn decade_above(v: f64) -> f64 {
    10f64.powf(v.max(1e-6).log10().ceil())
}

/// An axis label: short, without trailing zeros (50k, 2.5M, 0.25).
fn short(v: &f64) -> String {
    let trim = |x: f64, decimals: usize| {
        let s = format!("{x:.decimals$}");
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
    };
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(v / 1e6, 2)),
        a if a >= 1e4 => format!("{}k", trim(v / 1e3, 1)),
        a if a >= 1.0 || a == 0.0 => trim(*v, 1),
        _ => trim(*v, 3),
    }
}

/// Draws a legend right of the plotting area `area` (its pixel ranges), in the margin kept for
/// it (plotters' own legend stays inside the plotting area, over the data).
fn legend(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: (Range<i32>, Range<i32>),
    entries: &[(String, ShapeStyle)],
) -> Res<()> {
    let (x, top) = (area.0.end + 16, area.1.start + 10);
    let font = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, style)) in entries.iter().enumerate() {
        let y = top + 22 * i as i32;
        root.draw(&PathElement::new(vec![(x, y), (x + 24, y)], *style))?;
        root.draw(&Text::new(label.as_str(), (x + 32, y), font.clone()))?;
    }
    Ok(())
}

/// A plot of `lines` over the run's seconds, on the y axis `y` (linear or log).
fn line_chart<Y>(title: &str, y_desc: &str, x_end: f64, y: Y, lines: &[Line]) -> Res<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .margin_right(LEGEND_WIDTH)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_end, y)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc(y_desc)
            .x_label_formatter(&short)
            .y_label_formatter(&short)
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let mut entries = Vec::new();
        for l in lines {
            let style = ShapeStyle { color: l.color.to_rgba(), filled: false, stroke_width: 2 };
            for part in l.points.split(|p| p.1.is_nan()) {
                match part {
                    [] => {}
                    [one] => {
                        chart.draw_series([Circle::new(*one, 2, style.filled())])?;
                    }
                    _ => {
                        chart.draw_series(LineSeries::new(part.iter().copied(), style))?;
                    }
                }
            }
            entries.push((l.label.clone(), style));
        }
        legend(&root, chart.plotting_area().get_pixel_range(), &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// The whole run's command latencies, 10 log bins per decade, with its percentiles marked.
fn latency_histogram(report: &Report) -> Res<String> {
    let h = &report.latency;
    let lo = decade_below(h.min().max(1) as f64);
    let hi = decade_above(h.max().max(1) as f64 * 1.01);
    let bins = ((hi / lo).log10() * 10.0).round().max(1.0) as usize;
    let mut counts = vec![0u64; bins];
    for v in h.iter_recorded() {
        let bin = ((v.value_iterated_to().max(1) as f64 / lo).log10() * 10.0).floor() as usize;
        counts[bin.min(bins - 1)] += v.count_at_value();
    }
    let edge = |i: usize| lo * 10f64.powf(i as f64 / 10.0) / 1000.0;
    let y_top = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(TITLES[2], ("sans-serif", 22))
            .margin(14)
            .margin_right(LEGEND_WIDTH)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d((lo / 1000.0..hi / 1000.0).log_scale(), 0.0..y_top)?;
        chart
            .configure_mesh()
            .x_desc("command latency, ms (log scale)")
            .y_desc("commands")
            .x_label_formatter(&short)
            .y_label_formatter(&short)
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let fill = BLUE_.mix(0.65).filled();
        chart.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| Rectangle::new([(edge(i), 0.0), (edge(i + 1), c as f64)], fill)),
        )?;
        let marks = [
            ("p50", report.latency_ms(0.5), GREEN_),
            ("p99", report.latency_ms(0.99), ORANGE),
            ("p99.9", report.latency_ms(0.999), PURPLE),
            ("max", report.max_latency_ms(), RED_),
        ];
        let mut entries = Vec::new();
        for (name, at, color) in marks {
            let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
            chart.draw_series(LineSeries::new([(at, 0.0), (at, y_top)], style))?;
            entries.push((format!("{name} {at:.3} ms"), style));
        }
        legend(&root, chart.plotting_area().get_pixel_range(), &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// Text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html(args: &LoadArgs, report: &Report, series: &Series, plots: &[(String, String)]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let params: [(&str, String); 14] = [
        ("events", args.events.to_string()),
        ("streams (accounts)", args.streams.to_string()),
        ("writers (clients)", args.writers.to_string()),
        ("partitions", args.partitions.to_string()),
        ("payload bytes", args.payload.to_string()),
        ("events per command", args.batch.to_string()),
        ("duration limit", args.duration.map_or("none".to_owned(), |d| format!("{d} s"))),
        ("durability", format!("{:?}", args.durability).to_lowercase()),
        ("preallocate", (!args.no_preallocate).to_string()),
        ("segment size", format!("{} MiB", args.segment_mib)),
        ("compaction every", format!("{} s", args.compact_every)),
        ("retention", format!("{} s", args.retention)),
        (
            "hot sealed segments",
            if args.hot_mib > 0 {
                format!("at most {} MiB per partition", args.hot_mib)
            } else {
                "no bound".to_owned()
            },
        ),
        ("samples", format!("{}, every {} ms", series.samples.len(), series.tick.as_millis())),
    ];
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>strata load report</title>\n\
<style>\nbody {{ font-family: sans-serif; margin: 24px auto; max-width: 1040px; color: #222; padding: 0 16px; }}\n\
.params {{ columns: 3; column-gap: 32px; }}\n.params div {{ padding: 1px 0; }}\n\
.params span {{ color: #555; display: inline-block; min-width: 150px; }}\n\
pre {{ background: #f5f5f5; padding: 12px; overflow-x: auto; font-size: 12.5px; line-height: 1.4; }}\n\
figure {{ margin: 20px 0; }}\nfigure svg {{ display: block; max-width: 100%; height: auto; }}\n\
figcaption {{ color: #444; font-size: 14px; margin-top: 4px; }}\n</style>\n</head>\n<body>\n\
<h1>strata load</h1>\n<p>Finished {}; store <code>{}</code>.</p>\n<h2>Parameters</h2>\n<div class=\"params\">\n",
        crate::common::time(now),
        escape(&report.dir.display().to_string())
    );
    for (k, v) in &params {
        let _ = writeln!(h, "<div><span>{}</span> {}</div>", escape(k), escape(v));
    }
    let _ = write!(h, "</div>\n<h2>Summary</h2>\n<pre>{}</pre>\n<h2>Over the run</h2>\n", escape(&report.text(args)));
    for (svg, caption) in plots {
        let _ = write!(h, "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n", escape(caption));
    }
    h.push_str("</body>\n</html>\n");
    h
}
