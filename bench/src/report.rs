//! Turning samples into what people read: a markdown table of medians, results.json
//! with every sample, and SVG plots (latency percentile curves, throughput vs workers).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::run::Sample;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

type Key = (String, usize, usize, String);

fn groups(samples: &[Sample]) -> BTreeMap<Key, Vec<&Sample>> {
    let mut g: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        g.entry((
            s.scenario.clone(),
            s.connections,
            s.workers,
            s.system.clone(),
        ))
        .or_default()
        .push(s);
    }
    g
}

pub fn markdown(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| scenario | conns | workers | system | req/s | p50 us | p90 us | p99 us | p99.9 us | proxy CPU/req us | errors | rounds |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut idle = String::new();
    let mut swaps = String::new();
    let mut discovery = String::new();
    let mut checks = String::new();
    for ((scenario, conns, workers, system), rows) in groups(samples) {
        let med = |f: &dyn Fn(&Sample) -> f64| median(rows.iter().map(|s| f(s)).collect());
        let errors: u64 = rows.iter().map(|s| s.errors).sum();
        if scenario == "discovery-swap" {
            let figs: Vec<_> = rows.iter().filter_map(|s| s.swap.clone()).collect();
            let Some(f) = figs.first() else { continue };
            let m =
                |g: &dyn Fn(&crate::run::SwapFigures) -> f64| median(figs.iter().map(g).collect());
            let _ = writeln!(
                discovery,
                "| {system} | {} | {} | {} | {:.1} | {:.1} | {errors} | {} |",
                f.routes,
                f.clusters,
                figs.iter().map(|f| f.swaps).sum::<usize>(),
                m(&|f| f.median_ms),
                m(&|f| f.max_ms),
                rows.len()
            );
            continue;
        }
        if scenario == "reload-swap" {
            // One row per load: closed loop (key 0), then each fixed rate.
            let mut by_load: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
            for s in &rows {
                let rate = s.swap.as_ref().and_then(|f| f.rate);
                by_load
                    .entry(rate.map_or(0, |r| r as u64))
                    .or_default()
                    .push(s);
            }
            for (rate, load_rows) in &by_load {
                let figs: Vec<_> = load_rows.iter().filter_map(|s| s.swap.clone()).collect();
                let Some(f) = figs.first() else { continue };
                let m = |g: &dyn Fn(&crate::run::SwapFigures) -> f64| {
                    median(figs.iter().map(g).collect())
                };
                let load = match rate {
                    0 => "closed loop".to_string(),
                    r => format!("{r} req/s"),
                };
                let errors: u64 = load_rows.iter().map(|s| s.errors).sum();
                let _ = writeln!(
                    swaps,
                    "| {system} | {load} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}x | {} | {errors} |",
                    f.routes,
                    f.clusters,
                    m(&|f| f.swaps as f64),
                    m(&|f| f.median_ms),
                    m(&|f| f.max_ms),
                    m(&|f| f.p99_without_swaps_us as f64),
                    m(&|f| f.p99_with_swaps_us as f64),
                    // Per round, each round's two sides measured interleaved.
                    m(&|f| f.p99_with_swaps_us as f64 / f.p99_without_swaps_us.max(1) as f64),
                    pooled_p99(&figs)
                );
            }
            continue;
        }
        if scenario == "health-checks" {
            // One row per placement of the endpoints: loopback, then the namespace.
            for placement in ["loopback", "namespace"] {
                let here: Vec<&Sample> = rows
                    .iter()
                    .copied()
                    .filter(|s| s.checks.as_ref().is_some_and(|c| c.placement == placement))
                    .collect();
                if here.is_empty() {
                    continue;
                }
                let m = |f: &dyn Fn(&Sample) -> f64| median(here.iter().map(|s| f(s)).collect());
                let errors: u64 = here.iter().map(|s| s.errors).sum();
                let _ = writeln!(
                    checks,
                    "| {system} | {conns} | {placement} | {:.0} | {:.2} | {:.1} | {errors} | {} |",
                    m(&|s| s.rps),
                    m(&|s| s.checks.as_ref().map_or(f64::NAN, |c| c.core_percent)),
                    m(&|s| s.cpu_us_per_req.unwrap_or(f64::NAN)),
                    here.len()
                );
            }
            continue;
        }
        if scenario == "idle-conns" {
            let b = med(&|s| s.idle_bytes_per_conn.unwrap_or(f64::NAN));
            let _ = writeln!(idle, "| {system} | {conns} | {b:.0} |");
            continue;
        }
        let cpu = med(&|s| s.cpu_us_per_req.unwrap_or(f64::NAN));
        let cpu = if cpu.is_nan() {
            "–".to_string()
        } else {
            format!("{cpu:.2}")
        };
        let mut system = system.clone();
        if let Some(r) = rows.iter().filter_map(|s| s.reloads).max() {
            system += &format!(" ({r} reloads)");
        }
        // h2load reports no percentiles: its rows show the mean in the p50 column.
        let percentiles = if rows.iter().all(|s| s.curve.is_empty()) {
            let mean = med(&|s| s.mean_latency_us.unwrap_or(f64::NAN));
            format!("mean {mean:.0} | – | – | –")
        } else {
            format!(
                "{:.0} | {:.0} | {:.0} | {:.0}",
                med(&|s| s.p50_us as f64),
                med(&|s| s.p90_us as f64),
                med(&|s| s.p99_us as f64),
                med(&|s| s.p999_us as f64),
            )
        };
        let _ = writeln!(
            out,
            "| {scenario} | {conns} | {workers} | {system} | {:.0} | {percentiles} | {cpu} | {errors} | {} |",
            med(&|s| s.rps),
            rows.len()
        );
    }
    if !swaps.is_empty() {
        out += "\n| reload-swap: system | load | routes | clusters | swaps | SIGHUP->serving median ms | max ms | p99 us without swaps | p99 us with swaps | p99 ratio, median of rounds | p99 of all rounds pooled: without -> with | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        out += &swaps;
    }
    if !discovery.is_empty() {
        out += "\n| discovery-swap: system | routes | clusters | changes | answer->traffic median ms (median of rounds) | max ms (median of rounds) | errors | rounds |\n|---|---|---|---|---|---|---|---|\n";
        out += &discovery;
    }
    if !checks.is_empty() {
        out += "\n| health-checks (HTTP, every 1 s): system | endpoints | where the endpoints are | checks/s counted at the endpoints | % of one core | CPU us per check | errors | rounds |\n|---|---|---|---|---|---|---|---|\n";
        out += &checks;
    }
    if !idle.is_empty() {
        out += "\n| idle keep-alive connections: system | connections | RSS bytes per connection |\n|---|---|---|\n";
        out += &idle;
    }
    out
}

/// p99 without and with swaps over every round's requests together: more requests
/// behind each figure than one round has, so one stall of the machine moves it less.
fn pooled_p99(figs: &[crate::run::SwapFigures]) -> String {
    let mut pooled: Option<[hdrhistogram::Histogram<u64>; 2]> = None;
    for w in figs.iter().filter_map(|f| f.latency.as_deref()) {
        match &mut pooled {
            None => pooled = Some(w.clone()),
            Some(p) => {
                for (mine, theirs) in p.iter_mut().zip(w) {
                    let _ = mine.add(theirs);
                }
            }
        }
    }
    match pooled {
        Some([without, with]) if !without.is_empty() && !with.is_empty() => {
            let (a, b) = (
                without.value_at_quantile(0.99),
                with.value_at_quantile(0.99),
            );
            format!("{a} -> {b} us ({:.2}x)", b as f64 / a.max(1) as f64)
        }
        _ => "–".into(),
    }
}

pub fn total_errors(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| s.errors).sum()
}

pub fn write_all(samples: &[Sample], out: &Path, header: &str) -> std::io::Result<()> {
    let json = serde_json::json!({ "run": header, "samples": samples });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    std::fs::write(
        out.join("results.md"),
        format!("{header}\n\n{}", markdown(samples)),
    )?;
    for (scenario, conns) in latency_plot_points(samples) {
        let svg = latency_svg(samples, &scenario, conns);
        std::fs::write(out.join(format!("latency-{scenario}-c{conns}.svg")), svg)?;
    }
    if samples.iter().any(|s| s.scenario == "scale") {
        std::fs::write(out.join("scale.svg"), scale_svg(samples))?;
    }
    Ok(())
}

fn latency_plot_points(samples: &[Sample]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = samples
        .iter()
        .filter(|s| !s.curve.is_empty() && s.scenario != "scale")
        .map(|s| (s.scenario.clone(), s.connections))
        .collect();
    v.sort();
    v.dedup();
    v
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 720.0;
const H: f64 = 420.0;
const PAD: f64 = 60.0;

/// A line chart: `series` of (label, points) in data coordinates; log-scaled x if `log_x`.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_ticks: &[(f64, String)],
) -> String {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let span = (xmax - xmin).max(1e-9);
    let px = |x: f64| PAD + (x - xmin) / span * (W - 2.0 * PAD);
    let py = |y: f64| H - PAD - y / ymax * (H - 2.0 * PAD);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        W / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD,
        W - PAD,
        H - PAD
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD
    );
    for (x, label) in x_ticks {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            px(*x),
            H - PAD + 18.0
        );
    }
    for i in 0..=5 {
        let y = ymax / 5.0 * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text><line x1=\"{PAD}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            PAD - 6.0,
            py(y) + 4.0,
            y,
            py(y),
            W - PAD,
            py(y)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>",
        W / 2.0,
        H - 16.0
    );
    let _ = writeln!(s, "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{y_label}</text>", H / 2.0, H / 2.0);
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(*x),
                py(*y)
            );
        }
        let ly = PAD + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            PAD + 12.0,
            ly - 4.0,
            PAD + 30.0,
            ly
        );
    }
    s += "</svg>\n";
    s
}

/// Percentile p on a "nines" axis: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3, ...
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

fn latency_svg(samples: &[Sample], scenario: &str, conns: usize) -> String {
    let mut by_system: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.scenario == scenario && s.connections == conns && !s.curve.is_empty())
    {
        by_system.entry(s.system.clone()).or_default().push(s);
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = by_system
        .into_iter()
        .map(|(system, rows)| {
            let curve = rows[0].curve.iter().enumerate().map(|(i, (p, _))| {
                (
                    nines(*p),
                    median(
                        rows.iter()
                            .filter_map(|r| r.curve.get(i).map(|c| c.1 as f64))
                            .collect(),
                    ),
                )
            });
            (system, curve.collect())
        })
        .collect();
    let ticks: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|&p| (nines(p), format!("p{p}")))
        .collect();
    chart(
        &format!("{scenario}, {conns} connections: latency by percentile (median of rounds)"),
        "percentile",
        "latency (us)",
        &series,
        &ticks,
    )
}

fn scale_svg(samples: &[Sample]) -> String {
    let mut by_system: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.scenario == "scale") {
        by_system
            .entry(s.system.clone())
            .or_default()
            .entry(s.workers)
            .or_default()
            .push(s.rps);
    }
    let mut ticks = Vec::new();
    let series: Vec<(String, Vec<(f64, f64)>)> = by_system
        .into_iter()
        .map(|(system, by_w)| {
            let pts: Vec<(f64, f64)> = by_w
                .into_iter()
                .map(|(w, v)| ((w as f64).log2(), median(v)))
                .collect();
            (system, pts)
        })
        .collect();
    for (_, pts) in &series {
        for (x, _) in pts {
            ticks.push((*x, format!("{}", 2f64.powf(*x) as usize)));
        }
    }
    chart(
        "scale: throughput vs workers (400 connections)",
        "workers",
        "requests/s",
        &series,
        &ticks,
    )
}
