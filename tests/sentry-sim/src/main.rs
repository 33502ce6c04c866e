//! `sentry-sim`: a simulated Sentry org on loopback, for the demo and benchmarks.
//!
//! ```text
//! sentry-sim [--port N] [--org SLUG] [--token TOKEN] [--projects N] [--busy N]
//!            [--events-per-hour N] [--history-hours N] [--late-share F] [--seed N]
//!            [--legacy] [--no-global-views] [--no-rate-limits] [--latency-ms N]
//! ```
//!
//! It fills `--history-hours` of past events (and as many rows of each Explore dataset) for the
//! first `--busy` projects and some audit-log entries, then keeps adding them as time passes, prints `listening on URL` and serves until SIGTERM or Ctrl-C.

use std::time::Duration;

use sentry_sim::{Rng, Sim, SimClock, SimOptions, DATASETS};

struct Args {
    port: u16,
    projects: u64,
    busy: u64,
    per_hour: u64,
    history_hours: i64,
    late_share: f64,
    seed: u64,
    options: SimOptions,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        projects: 20,
        busy: 3,
        per_hour: 600,
        history_hours: 2,
        late_share: 0.1,
        seed: 1,
        options: SimOptions::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => a.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--org" => a.options.org = value()?,
            "--token" => a.options.token = value()?,
            "--projects" => {
                a.projects = value()?.parse().map_err(|e| format!("--projects: {e}"))?
            }
            "--busy" => a.busy = value()?.parse().map_err(|e| format!("--busy: {e}"))?,
            "--events-per-hour" => {
                a.per_hour = value()?
                    .parse()
                    .map_err(|e| format!("--events-per-hour: {e}"))?
            }
            "--history-hours" => {
                a.history_hours = value()?
                    .parse()
                    .map_err(|e| format!("--history-hours: {e}"))?
            }
            "--late-share" => {
                a.late_share = value()?.parse().map_err(|e| format!("--late-share: {e}"))?
            }
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--latency-ms" => {
                a.options.latency = Duration::from_millis(
                    value()?.parse().map_err(|e| format!("--latency-ms: {e}"))?,
                )
            }
            "--legacy" => a.options.legacy_no_date_filter = true,
            "--no-global-views" => a.options.global_views = false,
            "--no-rate-limits" => a.options.rate_limits = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sentry-sim: {e}");
            std::process::exit(2);
        }
    };
    let clock = SimClock::default();
    let sim = Sim::new(args.options, clock.clone());
    for id in 1..=args.projects {
        sim.add_project(id, &format!("project-{id}"));
    }
    let mut rng = Rng::new(args.seed);
    let now = clock.now();
    let busy = args.busy.min(args.projects);
    for id in 1..=busy {
        let count = args.per_hour * args.history_hours as u64;
        sim.generate(
            &mut rng,
            id,
            count,
            now - args.history_hours * 3600,
            now,
            args.late_share,
            1800,
        );
        // The other streams' data: rows of each dataset at the same rate, some audit entries.
        for dataset in DATASETS {
            sim.generate_rows(
                &mut rng,
                dataset,
                id,
                count,
                now - args.history_hours * 3600,
                now,
                args.late_share,
                1800,
            );
        }
    }
    sim.generate_audit(
        &mut rng,
        20 * args.history_hours as u64,
        now - args.history_hours * 3600,
        now,
    );
    let server = match sim.serve(args.port).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sentry-sim: cannot listen: {e}");
            std::process::exit(2);
        }
    };
    println!("listening on {}", server.url());
    let live = {
        let sim = sim.clone();
        async move {
            let mut last = clock.now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = clock.now();
                let secs = (now - last) as u64;
                if secs == 0 {
                    continue;
                }
                for id in 1..=busy {
                    // Events of the last seconds, arriving at the configured hourly rate.
                    let count = (args.per_hour * secs + rng.below(3600)) / 3600;
                    sim.generate(&mut rng, id, count, last, now, args.late_share, 1800);
                    for dataset in DATASETS {
                        sim.generate_rows(
                            &mut rng,
                            dataset,
                            id,
                            count,
                            last,
                            now,
                            args.late_share,
                            1800,
                        );
                    }
                }
                if rng.chance(secs as f64 / 60.0) {
                    sim.generate_audit(&mut rng, 1, last, now);
                }
                last = now;
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = live => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(server);
}
