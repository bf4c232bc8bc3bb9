//! What one ractor actor costs: memory, spawn time, one cast. The figures
//! behind hosting DER actors in their site actor (ARCHITECTURE.md).
//!
//! Run: `cargo run --release -p vpp-load-tests --bin bench-actor-cost -- 200000`

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The smallest useful actor: a counter.
struct Counter;

impl Actor for Counter {
    type Msg = u64;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<u64>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<u64>,
        m: u64,
        s: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *s += m;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 200_000,
    };
    let r0 = vpp_load_tests::rss_bytes();
    let t = Instant::now();
    let mut actors = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, _) = Actor::spawn(None, Counter, ()).await?;
        actors.push(a);
    }
    let spawn = t.elapsed();
    let per_actor = vpp_load_tests::rss_bytes().saturating_sub(r0) / n as u64;
    let t = Instant::now();
    for a in &actors {
        a.cast(1)?;
    }
    let cast = t.elapsed();
    println!("machine: {}", vpp_load_tests::machine());
    println!("{n} ractor actors (2 worker threads)");
    println!(
        "spawn: {:.2} s in all, {:.1} us each",
        spawn.as_secs_f64(),
        spawn.as_micros() as f64 / n as f64
    );
    println!("memory: {per_actor} B per actor (RSS delta)");
    println!(
        "cast to each: {:.2} s in all, {:.2} us each",
        cast.as_secs_f64(),
        cast.as_micros() as f64 / n as f64
    );
    for a in actors {
        a.stop(None);
    }
    Ok(())
}
