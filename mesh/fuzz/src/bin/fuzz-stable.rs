//! Bounded-time fuzzing on stable Rust, without cargo-fuzz, nightly or sanitizers: mutates
//! each target's seeds (plus any inputs that grew its small corpus) for N seconds and fails
//! with the offending input on the first panic.
//!
//! Usage: fuzz-stable [--seconds N] [--seed S] [TARGET ...]   (default: every target, 30 s each)
#![forbid(unsafe_code)]

use std::panic;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mesh_fuzz::{TARGETS, Target};

/// xorshift64*: tiny, deterministic for a given seed, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to these grammars, tried more often than random ones.
const INTERESTING: &[u8] = b":[]/.-_;,=\"\\%@?# \t0123456789abcdefABCDEF\x00\xff\xc3";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let b = INTERESTING[rng.below(INTERESTING.len())];
                input.insert(rng.below(len + 1), b);
            }
            2 if len > 0 => {
                input.remove(rng.below(len));
            }
            3 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            4 => {
                // Splice in a slice of another corpus entry.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a + 1);
                    let at = rng.below(len + 1);
                    let end = at + rng.below(len - at + 1);
                    input.splice(at..end, other[a..b].iter().copied());
                }
            }
            5 if len > 0 => {
                // Repeat a chunk: finds length limits.
                let a = rng.below(len);
                let chunk = input[a..].to_vec();
                for _ in 0..rng.below(16) {
                    input.extend_from_slice(&chunk);
                }
            }
            _ => input.push(rng.next() as u8),
        }
    }
    // Past every parser's length cap (at most 8 KiB) longer inputs only cost time.
    input.truncate(10 * 1024);
}

fn run(target: &Target, budget: Duration, seed: u64) -> Result<u64, Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut corpus: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    corpus.push(Vec::new());
    let start = Instant::now();
    let mut execs = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            let ok = panic::catch_unwind(|| (target.run)(&input)).is_ok();
            execs += 1;
            if !ok {
                return Err(input);
            }
            // Keep a few mutants around so later mutations start from deeper states.
            if corpus.len() < 512 && input.len() <= 512 && rng.below(64) == 0 {
                corpus.push(input);
            }
        }
    }
    Ok(execs)
}

fn main() -> ExitCode {
    let mut seconds = 30u64;
    let mut seed = 0x5eed_u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "--list" => {
                TARGETS.iter().for_each(|t| println!("{}", t.name));
                return ExitCode::SUCCESS;
            }
            name => names.push(name.to_owned()),
        }
    }
    let selected: Vec<&Target> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match TARGETS.iter().find(|t| t.name == n) {
                Some(t) => v.push(t),
                None => {
                    eprintln!("unknown target {n:?}; try --list");
                    return ExitCode::FAILURE;
                }
            }
        }
        v
    };
    // Panics are expected findings; report them ourselves, once, with the input.
    panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let (mut passed, mut failed) = (0, 0);
    for t in selected {
        match run(t, Duration::from_secs(seconds), seed) {
            Ok(execs) => {
                passed += 1;
                println!("fuzz {}: ok, {execs} inputs in {seconds} s (seed {seed})", t.name);
            }
            Err(input) => {
                failed += 1;
                println!(
                    "fuzz {}: FAILED on input {:?} (hex {}) (seed {seed})",
                    t.name,
                    String::from_utf8_lossy(&input),
                    input.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
