//! What tollgate costs on a real node (bench/node.sh, on the cluster of `scripts/cluster.sh up`, whose
//! exports it reads): pod creation through the API server with the webhook running as the chart installs it
//! versus in a namespace it leaves alone, and what the sidecar adds to an analysis's life — from creation to
//! the app's first line, from the proxy's start to the app's, and from the app's last line to the pod being
//! done. Prints bench/run.sh table rows.
//!
//!   tollgate-node-bench [CREATES] [RUNS]      default 100 creations and 6 runs of each

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;
use tollgate_e2e::{percentile, precise};

const EXAMPLE: &str = "localhost/tollgate/example-analysis:0.1.0";
const UNTOUCHED: &str = "bench-untouched";

fn pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "node"},
            "annotations": {"tollgate.dev/analysis-id": "a1", "tollgate.dev/project-id": "p1"}},
        "spec": {"restartPolicy": "Never", "nodeName": node, "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "app", "image": EXAMPLE, "args": ["whoami"]}]},
    }))
    .expect("a valid pod")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

/// The container's log lines, each with its runtime stamp (nanoseconds, the node's clock) as seconds.
async fn lines(pods: &Api<Pod>, name: &str, container: &str) -> Vec<(f64, String)> {
    let params = LogParams { container: Some(container.to_owned()), timestamps: true, ..LogParams::default() };
    let text = pods.logs(name, &params).await.unwrap_or_else(|e| panic!("logs of {name}/{container}: {e}"));
    text.lines().filter_map(|line| line.split_once(' ')).map(|(stamp, rest)| (precise::seconds(stamp), rest.to_owned())).collect()
}

struct Life {
    /// Creation (the client's clock, the same machine's) to the app's first log line.
    to_app_start: f64,
    /// The app's last log line to the pod's phase read as done (polled every 20 ms).
    app_end_to_done: f64,
    /// With tollgate: the proxy's first log line to the app's first.
    proxy_to_app: Option<f64>,
    /// With tollgate: SIGTERM to exit, as the proxy logged it.
    proxy_exit: Option<f64>,
}

async fn live(pods: &Api<Pod>, name: &str, hardened: bool) -> Life {
    let created = now();
    pods.create(&PostParams::default(), &pod(name, None)).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let phase = pods.get(name).await.ok().and_then(|p| p.status).and_then(|s| s.phase).unwrap_or_default();
        match phase.as_str() {
            "Succeeded" => break now(),
            "Failed" => panic!("{name} failed: {:?}", pods.logs(name, &LogParams::default()).await),
            _ if Instant::now() > deadline => panic!("{name} did not finish within 120 s (phase {phase:?})"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let app = lines(pods, name, "app").await;
    let (first, last) = (app.first().expect("the app printed").0, app.last().expect("the app printed").0);
    let (proxy_to_app, proxy_exit) = if hardened {
        let proxy = lines(pods, name, "tollgate-proxy").await;
        let exit = proxy
            .iter()
            .filter_map(|(_, line)| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "no request in flight; exiting")
            .and_then(|line| line["after_ms"].as_f64())
            .unwrap_or_else(|| panic!("the proxy of {name} did not log its exit: {proxy:?}"));
        (Some(first - proxy.first().expect("the proxy logged").0), Some(exit / 1000.0))
    } else {
        (None, None)
    };
    pods.delete(name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("delete {name}: {e}"));
    Life { to_app_start: first - created, app_end_to_done: done - last, proxy_to_app, proxy_exit }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|n| n.parse::<usize>().expect("CREATES and RUNS are numbers"));
    let (creates, runs) = (args.next().unwrap_or(100), args.next().unwrap_or(6));
    let analysis =
        std::env::var("TOLLGATE_ANALYSIS_NAMESPACE").expect("TOLLGATE_ANALYSIS_NAMESPACE: run scripts/cluster.sh up and eval its output");
    let client = kube::Client::try_default().await.expect("KUBECONFIG: run scripts/cluster.sh up and eval its output");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(UNTOUCHED).await.expect("namespaces readable").is_none() {
        let namespace = serde_json::from_value(json!({"metadata": {"name": UNTOUCHED}})).expect("a namespace");
        namespaces.create(&PostParams::default(), &namespace).await.expect("namespace created");
    }
    let hardened: Api<Pod> = Api::namespaced(client.clone(), &analysis);
    let untouched: Api<Pod> = Api::namespaced(client, UNTOUCHED);
    let sides = [(&hardened, true), (&untouched, false)];
    let clear = || async {
        for (api, _) in sides {
            api.delete_collection(
                &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
                &ListParams::default().labels("bench=node"),
            )
            .await
            .expect("bench pods deleted");
        }
    };
    clear().await;

    // Creation alone: bound to a node that does not exist, so nothing runs and the node stays quiet.
    let warm_up = 10;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..warm_up + creates {
        for (api, is_hardened) in sides {
            let started = Instant::now();
            let created =
                api.create(&PostParams::default(), &pod(&format!("create-{i}"), Some("bench-nowhere"))).await.expect("pod created");
            let took = started.elapsed().as_secs_f64();
            if is_hardened {
                let injected = created.metadata.labels.as_ref().and_then(|l| l.get("tollgate.dev/injected"));
                assert_eq!(injected.map(String::as_str), Some("true"), "the webhook hardened the pod");
            }
            if i >= warm_up {
                if is_hardened { &mut with } else { &mut without }.push(took);
            }
        }
    }
    clear().await;
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let (p50, base50) = (percentile(&with, 0.5), percentile(&without, 0.5));
    let (p99, base99) = (percentile(&with, 0.99), percentile(&without, 0.99));
    let fine = |s: f64| format!("{:.2} ms", s * 1000.0);
    eprintln!("creation with tollgate: p50 {} p99 {}; without: p50 {} p99 {}", fine(p50), fine(p99), fine(base50), fine(base99));
    println!(
        "ROW\tnode\tpod creation on the node's API server, p50 ({creates} pods each, alternating; webhook as a pod behind its Service)\t{}\twithout tollgate {}\tadded {}\tadded p50 ≤ 2 ms",
        fine(p50),
        fine(base50),
        fine(p50 - base50)
    );
    println!(
        "ROW\tnode\tpod creation on the node's API server, p99\t{}\twithout tollgate {}\tadded {}\t",
        fine(p99),
        fine(base99),
        fine(p99 - base99)
    );

    // Whole lives, one pod at a time, alternating: an app that prints and exits.
    let (mut lives_with, mut lives_without) = (Vec::new(), Vec::new());
    for i in 0..runs {
        lives_with.push(live(&hardened, &format!("life-{i}"), true).await);
        lives_without.push(live(&untouched, &format!("life-{i}"), false).await);
        let (w, o) = (lives_with.last().expect("one"), lives_without.last().expect("one"));
        eprintln!(
            "life {i}: app started {} / {} after creation, pod done {} / {} after the app's last line (with / without); proxy to app {}, proxy exit {}",
            ms(w.to_app_start),
            ms(o.to_app_start),
            ms(w.app_end_to_done),
            ms(o.app_end_to_done),
            ms(w.proxy_to_app.unwrap_or_default()),
            ms(w.proxy_exit.unwrap_or_default())
        );
    }
    let med = |lives: &[Life], f: fn(&Life) -> f64| median(lives.iter().map(f).collect());
    let (start_with, start_without) = (med(&lives_with, |l| l.to_app_start), med(&lives_without, |l| l.to_app_start));
    let (end_with, end_without) = (med(&lives_with, |l| l.app_end_to_done), med(&lives_without, |l| l.app_end_to_done));
    let proxy_to_app = med(&lives_with, |l| l.proxy_to_app.expect("hardened"));
    println!(
        "ROW\tnode\tcreation to the app's first line, median of {runs}\t{}\twithout tollgate {}\tadded {}\t",
        ms(start_with),
        ms(start_without),
        ms(start_with - start_without)
    );
    println!("ROW\tnode\tthe proxy's first line to the app's, median\t{}\t—\t—\t≤ 500 ms", ms(proxy_to_app));
    let proxy_exit = med(&lives_with, |l| l.proxy_exit.expect("hardened"));
    println!("ROW\tnode\tthe idle proxy's SIGTERM to its exit, median (as it logs it)\t{}\t—\t—\t≤ 500 ms", ms(proxy_exit));
    println!(
        "ROW\tnode\tthe app's last line to the pod done (proxy stopped), median\t{}\twithout tollgate {}\tadded {}\t",
        ms(end_with),
        ms(end_without),
        ms(end_with - end_without)
    );
    clear().await;
}
