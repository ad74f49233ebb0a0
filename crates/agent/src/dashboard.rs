//! The dashboard: one server-rendered HTML page, no script, reloading itself. One row per
//! dataset, one column per site, each cell green/amber/red against the dataset's RPO, and a lag
//! history chart per dataset as inline SVG. Rendered from the status document
//! ([`crate::report`]), the same typed values as `/status.json` and `/metrics`.

use std::fmt::Write as _;

use embassy_core::ErrorKind;

use crate::config::Config;
use crate::report::StatusReport;
use crate::state::AgentState;
use crate::status::{human_seconds, Colour};

/// Cell background colours; the headless-browser test samples these exact pixels.
pub const GREEN: (u8, u8, u8) = (0x2e, 0x9e, 0x44);
/// Amber cells.
pub const AMBER: (u8, u8, u8) = (0xf0, 0xa5, 0x00);
/// Red cells.
pub const RED: (u8, u8, u8) = (0xd7, 0x26, 0x3d);

/// Line colours of the history chart, one per site (none is a cell colour).
const LINE_COLOURS: [&str; 6] = [
    "#1f5fbf", "#7b3fa0", "#0f8b8d", "#444444", "#b5651d", "#c2185b",
];

/// HTML-escapes text that sites and writers control, after escaping its control, bidi and
/// zero-width characters ([`embassy_core::text::escape`]) so a page cannot be made to lie.
fn esc(s: &str) -> String {
    embassy_core::text::escape(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Renders the dashboard page of a status document; `state` gives the lag history charts.
pub fn render(config: &Config, report: &StatusReport, state: &AgentState, now_ns: i64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>Data Embassy: freshness</title>
<style>
body {{ font-family: "DejaVu Sans", sans-serif; margin: 16px; color: #222; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 4px 0; }}
p.meta {{ color: #555; margin: 0 0 12px 0; font-size: 13px; }}
table.freshness {{ border-collapse: separate; border-spacing: 4px; }}
table.freshness th {{ text-align: left; font-size: 13px; padding: 4px 8px; background: #eee; }}
td.dataset {{ font-size: 13px; padding: 4px 8px; min-width: 220px; }}
td.dataset small {{ color: #666; }}
td.cell {{ width: 150px; height: 44px; padding: 4px 8px; color: #fff; font-size: 12px; vertical-align: middle; }}
td.cell.green {{ background: {green}; }}
td.cell.amber {{ background: {amber}; color: #222; }}
td.cell.red {{ background: {red}; }}
td.cell.optional {{ opacity: 0.55; }}
td.cell[data-problem="integrity"] {{ outline: 4px solid #000; font-weight: bold; }}
li.integrity {{ font-weight: bold; }}
td.chart {{ padding: 0 4px; }}
ul.alarms li {{ margin: 2px 0; }}
</style></head><body>
<h1>Data Embassy: freshness of every dataset at every site</h1>
<p class="meta">Generated {now}; reloads every {refresh} s. Green: newest durable data within the RPO.
Amber: older than 75% of the RPO, the site is behind another, or it cannot be read now. Red: RPO breached, or no data at all.
Outlined and marked DAMAGED OR TAMPERED WITH: the data at the site does not verify (red at once, whatever the RPO); "unreachable": the site cannot be read.</p>
"#,
        refresh = config.status.refresh_seconds,
        green = hex(GREEN),
        amber = hex(AMBER),
        red = hex(RED),
        now = esc(&report.generated_at),
    );
    if !report.alarms.is_empty() {
        h.push_str("<h2>Alarms raised</h2><ul class=\"alarms\">");
        for a in &report.alarms {
            let kind = a.problem_kind.map_or("rpo", ErrorKind::as_str);
            let _ = write!(
                h,
                "<li id=\"alarm-{}-{}\" class=\"{kind}\" data-kind=\"{kind}\">{}{}</li>",
                esc(&a.dataset),
                esc(&a.site),
                if a.problem_kind == Some(ErrorKind::Integrity) {
                    "DAMAGED OR TAMPERED WITH: "
                } else {
                    ""
                },
                esc(&a.message)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<table class=\"freshness\"><thead><tr><th>dataset</th>");
    for s in &report.sites {
        let _ = write!(h, "<th>{}</th>", esc(&s.name));
    }
    h.push_str("<th>lag history</th></tr></thead><tbody>\n");
    for row in &report.datasets {
        let _ = write!(
            h,
            "<tr class=\"row {colour}\" id=\"row-{name}\"><td class=\"dataset\"><b>{name}</b><br><small>RPO {rpo}{owner}{class}</small>",
            colour = row.colour.name(),
            name = esc(&row.name),
            rpo = human_seconds(row.rpo_seconds),
            owner = row
                .owner
                .as_ref()
                .map(|o| format!(" · {}", esc(o)))
                .unwrap_or_default(),
            class = row
                .classification
                .as_ref()
                .map(|c| format!(" · {}", esc(c)))
                .unwrap_or_default(),
        );
        if let Some(e) = &row.last_error {
            if row.consecutive_failures > 0 {
                let _ = write!(
                    h,
                    "<br><small class=\"error\">last error: {}</small>",
                    esc(e)
                );
            }
        }
        if let Some(d) = &row.drill {
            let state = match (d.passed, d.overdue) {
                (_, true) => "OVERDUE",
                (Some(true), _) => "passed",
                (Some(false), _) => "FAILED",
                (None, _) => "not run yet",
            };
            let _ = write!(
                h,
                "<br><small class=\"drill{cls}\" id=\"drill-{name}\">drill: {state}{at}{rto}</small>",
                cls = if d.failed || d.overdue { " error" } else { "" },
                name = esc(&row.name),
                at = d.last_at.as_ref().map(|t| format!(" at {}", esc(t))).unwrap_or_default(),
                rto = d.rto_ms.map(|ms| format!(" · RTO {:.1}s", ms as f64 / 1000.0)).unwrap_or_default(),
            );
        }
        h.push_str("</td>");
        for c in &row.sites {
            let text = match (c.lag_seconds, c.newest_version) {
                // Continuous: the WAL position, and the newest base backup when there is one.
                (Some(l), v) if c.wal_end.is_some() => format!(
                    "WAL {} · {}{}",
                    c.wal_end.as_deref().unwrap_or(""),
                    if c.caught_up {
                        "current".to_string()
                    } else {
                        format!("{} old", human_seconds(l))
                    },
                    v.map(|v| format!(" · base v{v}")).unwrap_or_default()
                ),
                (Some(l), Some(v)) => format!("v{v} · {} old", human_seconds(l)),
                _ => match c.colour {
                    Colour::Red if c.error.is_some() => "unreadable".into(),
                    _ => "no version".into(),
                },
            };
            // What failed, in the words of its kind: damage is never shown as mere age.
            let text = match c.problem_kind {
                Some(ErrorKind::Integrity) => "DAMAGED OR TAMPERED WITH".to_string(),
                Some(k) if c.lag_seconds.is_none() => k.describe().to_string(),
                Some(k) => format!("{text} · {}", k.describe()),
                None => text,
            };
            let problem = c.problem_kind.map_or("", ErrorKind::as_str);
            let _ = write!(
                h,
                "<td class=\"cell {colour}{opt}\" id=\"cell-{d}-{s}\" data-colour=\"{colour}\" data-problem=\"{problem}\" title=\"{reason}\">{text}</td>",
                colour = c.colour.name(),
                opt = if c.required { "" } else { " optional" },
                d = esc(&row.name),
                s = esc(&c.site),
                reason = esc(&c.reason),
                text = esc(&text),
            );
        }
        let _ = writeln!(
            h,
            "<td class=\"chart\">{}</td></tr>",
            chart(config, state, &row.name, row.rpo_seconds, now_ns)
        );
    }
    h.push_str("</tbody></table>\n<h2>Sites</h2><ul class=\"sites\">");
    for s in &report.sites {
        let held = match (&s.error, s.bytes_stored) {
            // Left out of every run: say so, with the way out.
            (Some(e), _) if s.holds_no_vault => e.clone(),
            (_, Some(b)) => format!("{} held", embassy_core::text::size(b)),
            _ => "not readable".into(),
        };
        let queued = match s.catch_up_pending {
            Some(n) if n > 0 => format!("; {n} missed writes queued for catch-up"),
            _ => String::new(),
        };
        let verify = s
            .last_verify
            .as_ref()
            .map(|v| {
                format!(
                    "; last keyless verify {} {}: {}",
                    v.at,
                    match v.problem_kind {
                        _ if v.ok => "OK".to_string(),
                        Some(ErrorKind::Integrity) => "FAILED (damaged or tampered with)".into(),
                        Some(k) => format!("FAILED ({})", k.describe()),
                        None => "FAILED".into(),
                    },
                    v.summary
                )
            })
            .unwrap_or_else(|| "; not verified yet".into());
        let problem = s.problem_kind;
        let kind = problem.map_or("", ErrorKind::as_str);
        let _ = write!(
            h,
            "<li class=\"{kind}\" data-problem=\"{kind}\"><b>{}</b>{} {}: {}{}{}</li>",
            esc(&s.name),
            match problem {
                Some(ErrorKind::Integrity) => " DAMAGED OR TAMPERED WITH",
                Some(ErrorKind::Outage) => " unreachable",
                _ if s.holds_no_vault => " HOLDS NO VAULT (left out)",
                _ => "",
            },
            esc(&s.location),
            esc(&held),
            esc(&queued),
            esc(&verify)
        );
    }
    h.push_str("</ul>\n");
    if !report.groups.is_empty() {
        h.push_str("<h2>Consistency groups</h2><ul class=\"groups\">");
        for g in &report.groups {
            let last = match (g.last_point, &g.last_point_at) {
                (Some(n), Some(at)) => format!("point {n} at {at}"),
                _ => "no point yet".into(),
            };
            let failures = match &g.last_error {
                Some(e) if g.consecutive_failures > 0 => {
                    format!(
                        "; {} failed attempt(s), the last: {e}",
                        g.consecutive_failures
                    )
                }
                _ => String::new(),
            };
            let _ = write!(
                h,
                "<li class=\"{cls}\" id=\"group-{name}\"><b>{name}</b>{overdue} ({members}): {last}, every {every}{failures}</li>",
                cls = if g.overdue { "error" } else { "" },
                name = esc(&g.name),
                overdue = if g.overdue { " OVERDUE" } else { "" },
                members = esc(&g.members.join(", ")),
                last = esc(&last),
                every = human_seconds(g.interval_seconds),
                failures = esc(&failures),
            );
        }
        h.push_str("</ul>\n");
    }
    if !report.standbys.is_empty() {
        h.push_str("<h2>Embassy node: hot standbys</h2><ul class=\"standbys\">");
        for s in &report.standbys {
            let lag = match (s.lag_seconds, s.lag_bytes) {
                (Some(l), Some(b)) => format!("{l:.1} s / {b} bytes behind the vault"),
                _ => "lag not measured yet".into(),
            };
            let rebuilt = match (&s.last_rebuild_at, &s.last_rebuild_reason) {
                (Some(at), Some(why)) => {
                    format!("; rebuilt {} time(s), last at {at}: {why}", s.rebuilds)
                }
                _ => String::new(),
            };
            let problem = match &s.last_error {
                Some(e) if s.phase != "following" => format!("; {e}"),
                _ => String::new(),
            };
            let _ = write!(
                h,
                "<li class=\"{cls}\" id=\"standby-{name}\"><b>{name}</b> {phase} on port {port}: {lag} (alarm past {threshold}); {restarts} restart(s){rebuilt}{problem}</li>",
                cls = if s.alarm { "error" } else { "" },
                name = esc(&s.dataset),
                phase = esc(&s.phase),
                port = s.port,
                lag = esc(&lag),
                threshold = human_seconds(s.lag_alarm_seconds),
                restarts = s.restarts,
                rebuilt = esc(&rebuilt),
                problem = esc(&problem),
            );
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<p class=\"meta\">Machine-readable: <a href=\"/status.json\">/status.json</a> · <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n");
    h
}

/// A lag chart for one dataset: one line per site over the stored history, the RPO dashed.
fn chart(config: &Config, state: &AgentState, dataset: &str, rpo: f64, now_ns: i64) -> String {
    const W: f64 = 260.0;
    const H: f64 = 44.0;
    let now = now_ns / 1_000_000_000;
    let series: Vec<(&str, &Vec<(i64, f64)>)> = config
        .sites
        .iter()
        .filter_map(|s| {
            state
                .history
                .get(&format!("{dataset}@{}", s.name))
                .map(|p| (s.name.as_str(), p))
        })
        .collect();
    let start = series
        .iter()
        .filter_map(|(_, p)| p.first().map(|x| x.0))
        .min()
        .unwrap_or(now);
    let span = ((now - start).max(60)) as f64;
    let max_lag = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(rpo * 1.25, f64::max);
    let y = |lag: f64| H - 2.0 - (lag.max(0.0) / max_lag) * (H - 4.0);
    let x = |t: i64| ((t - start) as f64 / span) * W;
    let mut svg = format!(
        "<svg class=\"history\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"{W}\" height=\"{H}\" fill=\"#f7f7f7\"/>"
    );
    let _ = write!(
        svg,
        "<line x1=\"0\" x2=\"{W}\" y1=\"{r:.1}\" y2=\"{r:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"><title>RPO {}</title></line>",
        human_seconds(rpo),
        r = y(rpo)
    );
    for (i, (site, points)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.1 >= 0.0)
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        if let [only] = pts.as_slice() {
            // One point so far: a dot, so the chart shows that it has begun.
            let (cx, cy) = only.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2\" fill=\"{}\"><title>{}</title></circle>",
                LINE_COLOURS[i % LINE_COLOURS.len()],
                esc(site)
            );
            continue;
        }
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
            LINE_COLOURS[i % LINE_COLOURS.len()],
            pts.join(" "),
            esc(site)
        );
    }
    svg.push_str("</svg>");
    svg
}
