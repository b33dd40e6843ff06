//! Micro-benchmark: what a reload costs the control thread, phase by phase, for a
//! config with 10,000 exact-path routes over 1,000 clusters (the reload issue's size).
//! Run: `cargo bench -p weft-mesh --bench compile`.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_mesh::config::{self, Role};
use weft_mesh::snapshot;

// The allocator weft runs with: allocation is a large part of parsing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn big_config(routes: usize, clusters: usize) -> String {
    let mut c = String::from("[[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:1\"\n");
    for i in 0..routes {
        let _ = write!(
            c,
            "\n  [[listeners.routes]]\n  match = {{ path = \"/r{i}\" }}\n  cluster = \"c{}\"\n",
            i % clusters
        );
    }
    c += "\n  [[listeners.routes]]\n  match = { path_prefix = \"/\" }\n  cluster = \"c0\"\n";
    for i in 0..clusters {
        let _ = write!(c, "\n[clusters.c{i}]\nendpoints = [\"127.0.0.1:2\"]\n");
    }
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let text = big_config(10_000, 1_000);
    let file = Path::new("bench.toml");
    let (mut parse, mut compile, mut drop) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        let loaded = config::parse(file, &text, Role::Ingress).expect("config parses");
        parse.push(t.elapsed());
        let t = Instant::now();
        let snap = snapshot::compile(&loaded).expect("config compiles");
        compile.push(t.elapsed());
        let t = Instant::now();
        std::mem::drop((snap, loaded));
        drop.push(t.elapsed());
    }
    println!(
        "10,000 routes / 1,000 clusters ({} KiB of TOML), medians of 15:\n  parse   {:?}\n  compile {:?}\n  drop    {:?}",
        text.len() / 1024,
        median(parse),
        median(compile),
        median(drop)
    );
}
