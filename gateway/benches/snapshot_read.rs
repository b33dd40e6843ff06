//! Micro-benchmark: what reading the config snapshot costs a request.
//!
//! Every request calls `Worker::snapshot()`: one atomic load of the published version
//! (a cache line only the control thread writes, on reload), a `RefCell` borrow and an
//! `Rc` clone. Run: `cargo bench -p weft-gateway --bench snapshot_read`.

use std::hint::black_box;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use weft_gateway::control::Control;
use weft_gateway::runtime::worker::Worker;
use weft_mesh::config::{self, Role};
use weft_mesh::snapshot;

const CONFIG: &str = r#"
[[listeners]]
name = "l"
address = "127.0.0.1:1"
routes = [ { match = { path_prefix = "/" }, direct_response = { status = 200 } } ]
"#;

fn main() {
    let compile = || {
        let loaded = config::parse(Path::new("bench.toml"), CONFIG, Role::Ingress).expect("config");
        snapshot::compile(&loaded).expect("snapshot")
    };
    let control = Arc::new(Control::new(compile(), 1, Role::Ingress, Vec::new()));
    let (_tx, rx) = mpsc::channel();
    let worker = Worker::new(0, control.clone(), rx);
    const N: u32 = 50_000_000;
    for round in 0..3 {
        let t = Instant::now();
        for i in 0..N {
            black_box(i);
        }
        let empty = t.elapsed() / N;
        let t = Instant::now();
        for _ in 0..N {
            black_box(worker.snapshot());
        }
        let read = t.elapsed() / N;
        // The same with a reload every million reads (the version check then misses once).
        let t = Instant::now();
        for i in 0..N {
            if i % 1_000_000 == 0 {
                let v = control.publisher.publish(compile());
                control
                    .version
                    .store(v, std::sync::atomic::Ordering::Release);
            }
            black_box(worker.snapshot());
        }
        let with_reloads = t.elapsed() / N;
        println!("round {round}: empty loop {empty:?}/iter, snapshot read {read:?}/request, with a reload every 1M requests {with_reloads:?}/request");
    }
}
