//! Turns the JSON lines the scenarios append into one table (with ratios to the best peer), an
//! aggregated `results.json` and SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn size(b: u64) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

/// `123456` → `123 456`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn label(v: &Value) -> String {
    v.get("label").and_then(Value::as_str).unwrap_or("?").to_string()
}

fn read_rows(input: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", input.display())))
        .collect()
}

/// The median msgs/s of the full-load relay runs of `label` at `payload` and `window`.
pub fn median_rate(input: &Path, label: &str, payload: u64, window: u64) -> Result<f64, String> {
    let v: Vec<f64> = read_rows(input)?
        .iter()
        .filter(|r| {
            r["scenario"] == "relay"
                && r["rate"].is_null()
                && r["label"] == label
                && u(r, "payload") == payload
                && u(r, "window") == window
        })
        .map(|r| f(r, "msgs_per_s"))
        .collect();
    if v.is_empty() {
        return Err(format!(
            "no relay run of {label} at {payload} B window {window} in {}",
            input.display()
        ));
    }
    Ok(median(v))
}

/// Reads `input` (JSON lines), prints and writes `table.md`, `results.json` and SVG charts into
/// `out`. `peers` are the labels compared against; `charts` off skips the SVGs.
pub fn report(input: &Path, out: &Path, peers: &[String], charts: bool) -> Result<String, String> {
    let rows = read_rows(input)?;
    let mut systems: Vec<String> = Vec::new();
    for r in &rows {
        let l = label(r);
        if !systems.contains(&l) {
            systems.push(l);
        }
    }
    let ours: Vec<&String> = systems.iter().filter(|s| !peers.contains(s)).collect();
    let is_peer = |s: &str| peers.iter().any(|p| p == s);
    let mut t = String::new();

    // ---- relay throughput --------------------------------------------------------------------
    let relay = |r: &&Value| r["scenario"] == "relay" && r["rate"].is_null();
    let mut thr: BTreeMap<(u64, u64), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in rows.iter().filter(relay) {
        thr.entry((u(r, "payload"), u(r, "window")))
            .or_default()
            .entry(label(r))
            .or_default()
            .push(f(r, "msgs_per_s"));
    }
    let rounds = thr.values().flat_map(|m| m.values().map(Vec::len)).max().unwrap_or(0);
    let mut agg_relay = Vec::new();
    if !thr.is_empty() {
        let _ = writeln!(
            t,
            "### Relay throughput — delivered msgs/s, median of {rounds} round(s); (×N) = ratio to the best peer\n"
        );
        let _ = writeln!(t, "| payload | window | {} | best peer |", systems.join(" | "));
        let _ = writeln!(t, "|---|---:|{}---|", "---:|".repeat(systems.len()));
        for ((p, w), m) in &thr {
            let med: BTreeMap<&String, f64> = m.iter().map(|(k, v)| (k, median(v.clone()))).collect();
            let best = med
                .iter()
                .filter(|(k, _)| is_peer(k))
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, v)| ((*k).clone(), *v));
            let mut cells = Vec::new();
            for s in &systems {
                let c = match med.get(s) {
                    None => "–".into(),
                    Some(v) => match (&best, is_peer(s)) {
                        (Some((_, b)), false) => format!("{} (×{:.2})", thousands(*v), v / b),
                        _ => thousands(*v),
                    },
                };
                cells.push(c);
                if let Some(v) = med.get(s) {
                    agg_relay.push(json!({"payload": p, "window": w, "label": s, "msgs_per_s": v,
                        "runs": m[s], "ratio_to_best_peer": best.as_ref().map(|(_, b)| v / b)}));
                }
            }
            let bp = best.map(|(k, _)| k).unwrap_or_else(|| "–".into());
            let _ = writeln!(t, "| {} | {w} | {} | {bp} |", size(*p), cells.join(" | "));
        }
        t.push('\n');
    }

    // ---- CPU per message: the broker's, and the load generator's ------------------------------
    // Together they bound the throughput: on shared cores msgs/s ≤ cores × 10⁶ ÷ (broker +
    // generator µs per message); with one core each (run.sh --pin), ≤ 10⁶ ÷ the larger of them.
    for (key, title) in [
        ("broker_cpu_us_per_msg", "### Broker CPU time per delivered message — µs (user + system, /proc/PID/stat), median; lower is better\n"),
        ("generator_cpu_us_per_msg", "### Load generator CPU time per delivered message — µs (user + system, getrusage), median; for the bound it sets\n"),
    ] {
        let mut cpu: BTreeMap<(u64, u64), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for r in rows.iter().filter(relay) {
            if let Some(c) = r.get(key).and_then(Value::as_f64) {
                cpu.entry((u(r, "payload"), u(r, "window")))
                    .or_default()
                    .entry(label(r))
                    .or_default()
                    .push(c);
            }
        }
        if cpu.is_empty() {
            continue;
        }
        let _ = writeln!(t, "{title}");
        let _ = writeln!(t, "| payload | window | {} |", systems.join(" | "));
        let _ = writeln!(t, "|---|---:|{}", "---:|".repeat(systems.len()));
        for ((p, w), m) in &cpu {
            let cells: Vec<String> = systems
                .iter()
                .map(|s| m.get(s).map_or("–".into(), |v| format!("{:.2}", median(v.clone()))))
                .collect();
            let _ = writeln!(t, "| {} | {w} | {} |", size(*p), cells.join(" | "));
        }
        t.push('\n');
    }

    // ---- latency at half load ----------------------------------------------------------------
    let mut lat: BTreeMap<(u64, u64), BTreeMap<String, Vec<&Value>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["scenario"] == "relay" && !r["rate"].is_null()) {
        lat.entry((u(r, "payload"), u(r, "window")))
            .or_default()
            .entry(label(r))
            .or_default()
            .push(r);
    }
    let mut agg_lat = Vec::new();
    if !lat.is_empty() {
        let _ = writeln!(
            t,
            "### Latency POST→frame at half of each system's measured maximum — µs (median over rounds)\n"
        );
        let _ = writeln!(
            t,
            "| payload | window | system | paced at msgs/s | p50 | p99 | p99.9 | max |"
        );
        let _ = writeln!(t, "|---|---:|---|---:|---:|---:|---:|---:|");
        for ((p, w), m) in &lat {
            for s in &systems {
                let Some(v) = m.get(s) else { continue };
                let q = |k: &str| median(v.iter().map(|r| f(r, k)).collect());
                let _ = writeln!(
                    t,
                    "| {} | {w} | {s} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    size(*p),
                    thousands(q("rate")),
                    q("p50_us"),
                    q("p99_us"),
                    q("p999_us"),
                    q("max_us")
                );
                agg_lat.push(json!({"payload": p, "window": w, "label": s, "rate": q("rate"),
                    "p50_us": q("p50_us"), "p99_us": q("p99_us"), "p999_us": q("p999_us"), "max_us": q("max_us")}));
            }
        }
        t.push('\n');
    }

    // ---- idle --------------------------------------------------------------------------------
    let idle: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == "idle").collect();
    let mut agg_idle = Vec::new();
    if !idle.is_empty() {
        let best_peer = idle
            .iter()
            .filter(|r| is_peer(&label(r)) && r.get("error").is_none())
            .map(|r| f(r, "bytes_per_conn"))
            .min_by(|a, b| a.total_cmp(b));
        let _ = writeln!(
            t,
            "### Idle listeners — broker RSS (VmRSS) per subscribed, idle WebSocket listener\n"
        );
        let _ = writeln!(
            t,
            "| system | listeners | RSS before | RSS after | bytes per listener | vs best peer |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|");
        for r in &idle {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                let _ = writeln!(t, "| {} | failed: {} | | | | |", label(r), e.replace('|', "/"));
                agg_idle.push((*r).clone());
                continue;
            }
            let per = f(r, "bytes_per_conn");
            let ratio = match (best_peer, is_peer(&label(r))) {
                (Some(b), false) => format!("×{:.2}", per / b),
                _ => String::new(),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {:.1} MiB | {:.1} MiB | {} ({:.2} KiB) | {ratio} |",
                label(r),
                thousands(f(r, "connections")),
                f(r, "rss_before") / 1048576.0,
                f(r, "rss_after") / 1048576.0,
                thousands(per),
                per / 1024.0
            );
            agg_idle.push((*r).clone());
        }
        t.push('\n');
    }

    // ---- fan-in ------------------------------------------------------------------------------
    let fanin: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == "fanin").collect();
    if !fanin.is_empty() {
        let _ = writeln!(
            t,
            "### Fan-in / hot id — many senders (window 1) to one listener, small --queue-limit\n"
        );
        let _ = writeln!(t, "| system | senders | payload | accepted (204) = delivered | refused (503), retried | longest 503 streak | msgs/s | p50 µs | p99 µs |");
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &fanin {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                let _ = writeln!(t, "| {} | failed: {} | | | | | | | |", label(r), e.replace('|', "/"));
                continue;
            }
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                label(r),
                u(r, "senders"),
                size(u(r, "payload")),
                thousands(f(r, "delivered")),
                thousands(f(r, "rejected_503")),
                u(r, "max_retry_streak"),
                thousands(f(r, "msgs_per_s")),
                f(r, "p50_us"),
                f(r, "p99_us")
            );
        }
        t.push('\n');
    }

    // ---- fan-out -----------------------------------------------------------------------------
    let fan: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == "fanout").collect();
    let agg_fanout = ratio_table(
        &mut t,
        &systems,
        &fan,
        ("listeners", "listeners"),
        "deliveries_per_s",
        "### Fan-out — deliveries/s (messages × listeners received per second; 1 publisher, all listeners on one topic), median of {R} round(s); (×N) = ratio to the best peer\n",
        &is_peer,
    );
    cpu_table(
        &mut t,
        &systems,
        &fan,
        ("listeners", "listeners"),
        "broker_cpu_us_per_delivery",
        "### Fan-out — broker CPU time per delivery — µs (user + system, /proc/PID/stat), median; lower is better\n",
    );
    cpu_table(
        &mut t,
        &systems,
        &fan,
        ("listeners", "listeners"),
        "generator_cpu_us_per_delivery",
        "### Fan-out — load generator CPU time per delivery — µs (user + system, getrusage), median; for the bound it sets\n",
    );

    // ---- request-reply -----------------------------------------------------------------------
    let rr: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == "reqrep").collect();
    let agg_reqrep = ratio_table(
        &mut t,
        &systems,
        &rr,
        ("requesters", "requesters"),
        "round_trips_per_s",
        "### Request-reply — round trips/s (K requesters, one request outstanding each, one echoing responder), median of {R} round(s); (×N) = ratio to the best peer\n",
        &is_peer,
    );
    let mut by: BTreeMap<(u64, u64), BTreeMap<String, Vec<&Value>>> = BTreeMap::new();
    for r in rr.iter().filter(|r| r.get("error").is_none()) {
        by.entry((u(r, "requesters"), u(r, "payload")))
            .or_default()
            .entry(label(r))
            .or_default()
            .push(r);
    }
    if !by.is_empty() {
        let _ = writeln!(
            t,
            "### Request-reply — round-trip latency, µs (requester: request written → reply read), median over rounds\n"
        );
        let _ = writeln!(
            t,
            "| requesters | payload | system | round trips/s | p50 | p99 | p99.9 | max |"
        );
        let _ = writeln!(t, "|---:|---|---|---:|---:|---:|---:|---:|");
        for ((k, p), m) in &by {
            for s in systems.iter().filter(|s| m.contains_key(*s)) {
                let q = |key: &str| median(m[s].iter().map(|r| f(r, key)).collect());
                let _ = writeln!(
                    t,
                    "| {k} | {} | {s} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    size(*p),
                    thousands(q("round_trips_per_s")),
                    q("p50_us"),
                    q("p99_us"),
                    q("p999_us"),
                    q("max_us")
                );
            }
        }
        t.push('\n');
    }
    cpu_table(
        &mut t,
        &systems,
        &rr,
        ("requesters", "requesters"),
        "broker_cpu_us_per_rt",
        "### Request-reply — broker CPU time per round trip — µs (user + system, /proc/PID/stat), median; lower is better\n",
    );

    let agg_fault = fault_tables(&mut t, &systems, &rows);

    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let agg = json!({"systems": systems, "peers": peers, "relay": agg_relay, "latency_half_load": agg_lat,
        "idle": agg_idle, "fanin": fanin, "fanout": agg_fanout, "reqrep": agg_reqrep, "fault": agg_fault, "raw": rows});
    write(&out.join("results.json"), &serde_json::to_string_pretty(&agg).unwrap())?;
    write(&out.join("table.md"), &t)?;

    if charts {
        for w in thr.keys().map(|k| k.1).collect::<std::collections::BTreeSet<_>>() {
            let payloads: Vec<u64> = thr.keys().filter(|k| k.1 == w).map(|k| k.0).collect();
            let groups: Vec<String> = payloads.iter().map(|p| size(*p)).collect();
            let values: Vec<Vec<Option<f64>>> = systems
                .iter()
                .map(|s| {
                    payloads
                        .iter()
                        .map(|p| thr[&(*p, w)].get(s).map(|v| median(v.clone())))
                        .collect()
                })
                .collect();
            bar_chart(
                &out.join(format!("throughput-w{w}.svg")),
                &format!("Relay throughput, {w} in flight per sender (16 senders → 16 listeners)"),
                "delivered msgs/s (log scale)",
                &groups,
                &systems,
                &values,
            )?;
        }
        for ((p, w), m) in &lat {
            let present: Vec<String> = systems.iter().filter(|s| m.contains_key(*s)).cloned().collect();
            let qs = [("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us")];
            let values: Vec<Vec<Option<f64>>> = qs
                .iter()
                .map(|(_, k)| {
                    present
                        .iter()
                        .map(|s| Some(median(m[s].iter().map(|r| f(r, k)).collect())))
                        .collect()
                })
                .collect();
            let names: Vec<String> = qs.iter().map(|(n, _)| n.to_string()).collect();
            bar_chart(
                &out.join(format!("latency-{p}B-w{w}.svg")),
                &format!(
                    "POST→frame latency at half of max load, {} payload, window {w}",
                    size(*p)
                ),
                "µs (log scale)",
                &present,
                &names,
                &values,
            )?;
        }
    }
    let _ = ours;
    Ok(t)
}

/// The `--store-sync` of a fault row: `none`, `always` or `batch` (from the broker's command line,
/// or the policy a broken-down run recorded).
fn store_sync(r: &Value) -> &'static str {
    let b = r.get("broker").and_then(Value::as_str).unwrap_or("");
    if b.contains("batch") {
        "batch"
    } else if b.contains("always") || b.contains("--store ") {
        "always"
    } else {
        "none"
    }
}

/// Is this fault row a fault run (reconnects or kills), not a store-cost run?
fn with_faults(r: &Value) -> bool {
    match r.get("name").and_then(Value::as_str) {
        Some(n) => !n.starts_with("cost-"),
        None => f(r, "drop_prob") > 0.0 || u(r, "kills") > 0,
    }
}

/// The fault scenario's two tables: each fault run with its counts, and the store's cost (msgs/s
/// acknowledged without faults, no store / always / batch). Returns the aggregates.
fn fault_tables(t: &mut String, all: &[String], rows: &[Value]) -> Value {
    let fault: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == "fault").collect();
    if fault.is_empty() {
        return Value::Null;
    }
    let systems = labels_of(all, &fault);
    let runs: Vec<&&Value> = fault.iter().filter(|r| with_faults(r)).collect();
    if !runs.is_empty() {
        let _ = writeln!(
            t,
            "### Mailbox faults — listeners reconnecting with ?since=, brokers killed (SIGKILL) and restarted\n"
        );
        let _ = writeln!(
            t,
            "| system | store | acked | delivered | lost | duplicates | out of order | delivered unacked | reconnects | restarts (ms from exec to listening) | msgs/s acked | result |"
        );
        let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for s in &systems {
            for r in runs.iter().filter(|r| label(r) == *s) {
                if let Some(k) = r.get("skipped").and_then(Value::as_str) {
                    let _ = writeln!(t, "| {s} | – | | | | | | | | | | skipped: {k} |");
                    continue;
                }
                let result = match r.get("error").and_then(Value::as_str) {
                    Some(e) => format!("FAIL: {}", e.replace('|', "/")),
                    None => "ok".into(),
                };
                if r.get("acked").is_none() {
                    let _ = writeln!(t, "| {s} | {} | | | | | | | | | | {result} |", store_sync(r));
                    continue;
                }
                let ms: Vec<String> = r["restart_ms"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_f64).map(|m| format!("{m:.0}")).collect())
                    .unwrap_or_default();
                let _ = writeln!(
                    t,
                    "| {s} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} | {result} |",
                    store_sync(r),
                    thousands(f(r, "acked")),
                    thousands(f(r, "delivered")),
                    u(r, "lost"),
                    u(r, "duplicates"),
                    u(r, "out_of_order") + u(r, "misnumbered"),
                    u(r, "delivered_unacked"),
                    u(r, "reconnects"),
                    u(r, "restarts"),
                    if ms.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", ms.join(", "))
                    },
                    thousands(f(r, "msgs_per_s")),
                );
            }
        }
        t.push('\n');
    }
    // (window, payload) → (system, store sync) → runs.
    type Runs<'a> = BTreeMap<(String, &'static str), Vec<&'a Value>>;
    let mut cost: BTreeMap<(u64, u64), Runs> = BTreeMap::new();
    for r in fault.iter().filter(|r| !with_faults(r) && r.get("skipped").is_none()) {
        cost.entry((u(r, "window"), u(r, "payload")))
            .or_default()
            .entry((label(r), store_sync(r)))
            .or_default()
            .push(r);
    }
    let mut agg = Vec::new();
    if !cost.is_empty() {
        let _ = writeln!(
            t,
            "### Mailbox store cost — msgs/s acknowledged (202/204) without faults, median; ack p99 in µs; (×N) = ratio to no store\n"
        );
        let _ = writeln!(
            t,
            "| window | payload | system | no store | --store-sync always | --store-sync batch |"
        );
        let _ = writeln!(t, "|---:|---|---|---:|---:|---:|");
        for ((w, p), m) in &cost {
            for s in &systems {
                let cell = |sync: &str| -> (String, Option<f64>) {
                    let Some(v) = m.get(&(s.clone(), sync)) else {
                        return ("–".into(), None);
                    };
                    let ok: Vec<&&Value> = v.iter().filter(|r| r.get("error").is_none()).collect();
                    if ok.is_empty() {
                        return ("failed".into(), None);
                    }
                    let rate = median(ok.iter().map(|r| f(r, "msgs_per_s")).collect());
                    let p99 = median(ok.iter().map(|r| f(r, "ack_p99_us")).collect());
                    (format!("{} (p99 {p99:.0})", thousands(rate)), Some(rate))
                };
                let (none, base) = cell("none");
                if base.is_none() && none == "–" && !m.keys().any(|k| k.0 == *s) {
                    continue;
                }
                let mut row = vec![none];
                for sync in ["always", "batch"] {
                    let (c, v) = cell(sync);
                    row.push(match (v, base) {
                        (Some(v), Some(b)) => format!("{c} (×{:.2})", v / b),
                        _ => c,
                    });
                    if let Some(v) = v {
                        agg.push(json!({"window": w, "payload": p, "label": s, "store_sync": sync, "msgs_per_s": v}));
                    }
                }
                if let Some(b) = base {
                    agg.push(json!({"window": w, "payload": p, "label": s, "store_sync": "none", "msgs_per_s": b}));
                }
                let _ = writeln!(t, "| {w} | {} | {s} | {} |", size(*p), row.join(" | "));
            }
        }
        t.push('\n');
    }
    json!({"runs": runs, "store_cost": agg})
}

/// The systems that have rows here, in the order of `all`.
fn labels_of(all: &[String], rows: &[&Value]) -> Vec<String> {
    all.iter()
        .filter(|s| rows.iter().any(|r| label(r) == **s))
        .cloned()
        .collect()
}

/// One table of `metric` by (`key`, payload) × system, medians over rounds, ratios to the best
/// peer; a failed run (a row with `error`) shows as "failed" where no run succeeded. `title` may
/// hold `{R}`, the most rounds of any cell. Returns the aggregates.
fn ratio_table(
    t: &mut String,
    all: &[String],
    rows: &[&Value],
    (key, key_title): (&str, &str),
    metric: &str,
    title: &str,
    is_peer: &dyn Fn(&str) -> bool,
) -> Vec<Value> {
    let systems = labels_of(all, rows);
    let mut cells: BTreeMap<(u64, u64), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut failed: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut notes = Vec::new();
    for r in rows {
        let k = (u(r, key), u(r, "payload"));
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            failed.entry(k).or_default().push(label(r));
            notes.push(format!(
                "- {} at {} {key}, {}: {}",
                label(r),
                k.0,
                size(k.1),
                e.replace('|', "/")
            ));
            continue;
        }
        cells
            .entry(k)
            .or_default()
            .entry(label(r))
            .or_default()
            .push(f(r, metric));
    }
    for k in failed.keys() {
        cells.entry(*k).or_default();
    }
    let mut agg = Vec::new();
    if cells.is_empty() {
        return agg;
    }
    let rounds = cells.values().flat_map(|m| m.values().map(Vec::len)).max().unwrap_or(0);
    let _ = writeln!(t, "{}", title.replace("{R}", &rounds.to_string()));
    let _ = writeln!(t, "| {key_title} | payload | {} | best peer |", systems.join(" | "));
    let _ = writeln!(t, "|---:|---|{}---|", "---:|".repeat(systems.len()));
    for ((k, p), m) in &cells {
        let med: BTreeMap<&String, f64> = m.iter().map(|(s, v)| (s, median(v.clone()))).collect();
        let best = med
            .iter()
            .filter(|(s, _)| is_peer(s))
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(s, v)| ((*s).clone(), *v));
        let mut row = Vec::new();
        for s in &systems {
            let c = match med.get(s) {
                None if failed.get(&(*k, *p)).is_some_and(|f| f.contains(s)) => "failed".into(),
                None => "–".into(),
                Some(v) => match (&best, is_peer(s)) {
                    (Some((_, b)), false) => format!("{} (×{:.2})", thousands(*v), v / b),
                    _ => thousands(*v),
                },
            };
            row.push(c);
            if let Some(v) = med.get(s) {
                agg.push(json!({key: k, "payload": p, "label": s, metric: v, "runs": m[s],
                    "ratio_to_best_peer": best.as_ref().map(|(_, b)| v / b)}));
            }
        }
        let bp = best.map(|(s, _)| s).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            t,
            "| {} | {} | {} | {bp} |",
            thousands(*k as f64),
            size(*p),
            row.join(" | ")
        );
    }
    t.push('\n');
    if !notes.is_empty() {
        let _ = writeln!(t, "Failed runs:\n\n{}\n", notes.join("\n"));
    }
    agg
}

/// A table of the median of `metric` by (`key`, payload) × system.
fn cpu_table(
    t: &mut String,
    all: &[String],
    rows: &[&Value],
    (key, key_title): (&str, &str),
    metric: &str,
    title: &str,
) {
    let systems = labels_of(all, rows);
    let mut cells: BTreeMap<(u64, u64), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in rows {
        if let Some(c) = r.get(metric).and_then(Value::as_f64) {
            cells
                .entry((u(r, key), u(r, "payload")))
                .or_default()
                .entry(label(r))
                .or_default()
                .push(c);
        }
    }
    if cells.is_empty() {
        return;
    }
    let _ = writeln!(t, "{title}");
    let _ = writeln!(t, "| {key_title} | payload | {} |", systems.join(" | "));
    let _ = writeln!(t, "|---:|---|{}", "---:|".repeat(systems.len()));
    for ((k, p), m) in &cells {
        let row: Vec<String> = systems
            .iter()
            .map(|s| m.get(s).map_or("–".into(), |v| format!("{:.2}", median(v.clone()))))
            .collect();
        let _ = writeln!(t, "| {} | {} | {} |", thousands(*k as f64), size(*p), row.join(" | "));
    }
    t.push('\n');
}

fn write(p: &Path, s: &str) -> Result<(), String> {
    std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// A grouped bar chart on a log scale: `values[series][group]`.
fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let all: Vec<f64> = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| *v > 0.0)
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let ymin = 10f64.powf((lo / 2.0).log10().floor());
    let ymax = 10f64.powf((hi * 2.0).log10().ceil());
    let n = groups.len();
    let k = series.len().max(1);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (ymin..ymax).log_scale())
        .map_err(|x| e(&x))?;
    let names = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(4 * n + 1)
        .x_label_formatter(&|x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y: &f64| short(*y))
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    let w = 0.8 / k as f64;
    for (si, name) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let bars: Vec<(f64, f64)> = (0..n)
            .filter_map(|g| {
                values
                    .get(si)
                    .and_then(|v| v[g])
                    .map(|v| (g as f64 - 0.4 + si as f64 * w, v))
            })
            .collect();
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x0, v)| Rectangle::new([(x0, ymin), (x0 + w * 0.9, v)], color.filled())),
            )
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x0, v)| Text::new(short(v), (x0, v * 1.15), ("sans-serif", 11))),
            )
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
