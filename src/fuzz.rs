//! Fuzzing on stable Rust, run by `cargo test`: a deterministic generator, structure-aware
//! mutations and a runner. Each parser of untrusted input has a `fuzz` test module next to
//! it (its test path contains `::fuzz::`); each target starts from valid inputs built in
//! the test, mutates their fields, lengths and offsets (plus some pure random bytes), and
//! checks that the parser returns `Ok` or an `Err` with a message, never panics, and keeps
//! the invariants the target states.
//!
//! Environment:
//! - `MINIPC_FUZZ_ITERS`: cases per target (default: each target's own, sized for a debug
//!   build to take about a second).
//! - `MINIPC_FUZZ_SECONDS`: stop a target after this many seconds (a fraction allowed).
//! - `MINIPC_FUZZ_SEED`: the run's seed (default: fixed per target, so runs repeat).
//! - `MINIPC_FUZZ_CASE`: run one case, by the seed a failure printed.
//! - `MINIPC_FUZZ_KEEP_GOING=1`: after a panic, go on (up to 10) and fail at the end.
//! - `MINIPC_FUZZ_DUMP=PATH`: targets whose input is a file write each input there (with
//!   `MINIPC_FUZZ_CASE`, the failing one), for a regression test or a look with `xxd`.
//!
//! Each target prints `fuzz NAME: N executions in T s, C crashes` (seen with
//! `--nocapture`); `bench/fuzz.sh` collects these lines.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64* seeded through splitmix64: deterministic, and a failing case replays from its
/// own seed.
pub struct Rng(u64);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Values at the edges where arithmetic goes wrong.
const INTERESTING: [u64; 20] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    u64::MAX - 0xFFF,
];

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// An index into something of length `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A value at an arithmetic edge, or next to one, or random.
    pub fn interesting(&mut self) -> u64 {
        match self.below(4) {
            0 => self.next(),
            1 => self.next() >> self.below(64),
            _ => {
                let v = *self.pick(&INTERESTING);
                v.wrapping_add(self.below(5)).wrapping_sub(2)
            }
        }
    }
}

/// Writes `v`'s low `width` bytes little-endian at `at`, as far as `buf` reaches.
pub fn put_le(buf: &mut [u8], at: usize, width: usize, v: u64) {
    for (i, b) in v.to_le_bytes().iter().take(width).enumerate() {
        if let Some(x) = at.checked_add(i).and_then(|o| buf.get_mut(o)) {
            *x = *b;
        }
    }
}

/// Reads a little-endian value of `width` bytes at `at` (missing bytes read as zero).
pub fn get_le(buf: &[u8], at: usize, width: usize) -> u64 {
    let mut v = 0u64;
    for i in (0..width.min(8)).rev() {
        let b = at.checked_add(i).and_then(|o| buf.get(o)).copied();
        v = v << 8 | u64::from(b.unwrap_or(0));
    }
    v
}

/// A header field a mutation aims at: its offset and width in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Field(pub usize, pub usize);

/// Applies one to four mutations to `buf`: most aim at `fields` (setting edge values,
/// nudging, copying one field over another), the rest flip bits, overwrite random bytes,
/// cut or grow the buffer, or move a chunk.
pub fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, fields: &[Field]) {
    for _ in 0..=rng.below(4) {
        mutate_once(rng, buf, fields);
    }
}

fn mutate_once(rng: &mut Rng, buf: &mut Vec<u8>, fields: &[Field]) {
    let choice = rng.below(12);
    if !fields.is_empty() && choice < 6 {
        let Field(at, width) = *rng.pick(fields);
        let old = get_le(buf, at, width);
        let v = match choice {
            0 | 1 => rng.interesting(),
            2 => old.wrapping_add(rng.below(9)).wrapping_sub(4),
            3 => old ^ (1 << rng.below(width as u64 * 8)),
            4 => {
                let Field(o, w) = *rng.pick(fields);
                get_le(buf, o, w)
            }
            _ => {
                // Related to the buffer: its length, or an offset within it.
                let len = buf.len() as u64;
                let within = rng.below(len + 1);
                *rng.pick(&[len, len.wrapping_sub(1), len + 1, within])
            }
        };
        put_le(buf, at, width, v);
        return;
    }
    match choice {
        6 if !buf.is_empty() => {
            let i = rng.index(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        7 if !buf.is_empty() => {
            for _ in 0..=rng.below(8) {
                let i = rng.index(buf.len());
                buf[i] = rng.byte();
            }
        }
        8 => {
            // Cut: often just past a field, else anywhere.
            let to = match fields.is_empty() || rng.one_in(2) {
                true => rng.index(buf.len() + 1),
                false => {
                    let Field(at, w) = *rng.pick(fields);
                    (at + rng.index(w + 1)).min(buf.len())
                }
            };
            buf.truncate(to);
        }
        9 => {
            let max = if rng.one_in(8) { 0x4000 } else { 64 };
            let n = rng.index(max);
            let zeros = rng.one_in(2);
            for _ in 0..n {
                buf.push(if zeros { 0 } else { rng.byte() });
            }
        }
        10 if !buf.is_empty() => {
            let from = rng.index(buf.len());
            let to = rng.index(buf.len());
            let n = rng.index(64).min(buf.len() - from).min(buf.len() - to);
            buf.copy_within(from..from + n, to);
        }
        _ => {
            if let Some(&Field(at, w)) = fields.first().filter(|_| rng.one_in(2)) {
                put_le(buf, at, w, rng.next());
            } else if !buf.is_empty() {
                let i = rng.index(buf.len());
                buf[i] = *rng.pick(&[0u8, 0xFF, 0x7F, 0x80]);
            }
        }
    }
}

/// Writes a case's input file to `MINIPC_FUZZ_DUMP`, when set.
pub fn dump(bytes: &[u8]) {
    if let Some(p) = std::env::var_os("MINIPC_FUZZ_DUMP") {
        if let Err(e) = std::fs::write(&p, bytes) {
            eprintln!("MINIPC_FUZZ_DUMP: {}: {e}", p.to_string_lossy());
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A stable seed for a target's name, so an unchanged target repeats its run.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// How a target runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub iters: u64,
    pub limit: Option<Duration>,
    pub seed: u64,
    /// Run only the case of this seed.
    pub only: Option<u64>,
    pub keep_going: bool,
}

impl Settings {
    /// The settings the environment gives target `name`, `default_iters` cases by default.
    pub fn from_env(name: &str, default_iters: u64) -> Settings {
        let only = env_u64("MINIPC_FUZZ_CASE");
        Settings {
            iters: match only {
                Some(_) => 1,
                None => env_u64("MINIPC_FUZZ_ITERS").unwrap_or(default_iters),
            },
            limit: std::env::var("MINIPC_FUZZ_SECONDS")
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
                .map(Duration::from_secs_f64),
            seed: env_u64("MINIPC_FUZZ_SEED").unwrap_or_else(|| name_seed(name)),
            only,
            keep_going: std::env::var("MINIPC_FUZZ_KEEP_GOING").as_deref() == Ok("1"),
        }
    }
}

/// Runs target `name` as the environment says (`Settings::from_env`).
pub fn run(name: &str, default_iters: u64, case: impl FnMut(&mut Rng)) -> u64 {
    run_with(name, Settings::from_env(name, default_iters), case)
}

/// Runs target `name`: each case calls `case` with a generator seeded for that case. A
/// panicking case prints the line that replays it, then fails the test (with `keep_going`,
/// after up to ten). Returns the number of cases run.
pub fn run_with(name: &str, s: Settings, mut case: impl FnMut(&mut Rng)) -> u64 {
    let start = Instant::now();
    let mut done = 0u64;
    let mut crashes = Vec::new();
    let report = |done: u64, crashes: usize| {
        println!(
            "fuzz {name}: {done} executions in {:.2} s, {crashes} crashes",
            start.elapsed().as_secs_f64()
        )
    };
    while done < s.iters {
        if s.limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        let case_seed = s
            .only
            .unwrap_or_else(|| splitmix(s.seed ^ done.wrapping_mul(0x9E37_79B9)));
        let r = catch_unwind(AssertUnwindSafe(|| case(&mut Rng::new(case_seed))));
        done += 1;
        if let Err(payload) = r {
            eprintln!(
                "fuzz {name}: case {case_seed:#x} panicked; replay: MINIPC_FUZZ_CASE={case_seed:#x} cargo test --bin minipc {name}"
            );
            crashes.push(case_seed);
            if !s.keep_going || crashes.len() >= 10 {
                report(done, crashes.len());
                resume_unwind(payload);
            }
        }
    }
    report(done, crashes.len());
    assert!(
        crashes.is_empty(),
        "fuzz {name}: cases {crashes:#x?} panicked"
    );
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_repeats_from_a_seed_and_covers_its_range() {
        let a: Vec<u64> = (0..8).scan(Rng::new(7), |r, _| Some(r.next())).collect();
        let b: Vec<u64> = (0..8).scan(Rng::new(7), |r, _| Some(r.next())).collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (0..8)
                .scan(Rng::new(8), |r, _| Some(r.next()))
                .collect::<Vec<_>>()
        );
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[r.index(10)] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn fields_round_trip_and_stay_inside_the_buffer() {
        let mut b = vec![0u8; 6];
        put_le(&mut b, 2, 4, 0x1122_3344_5566);
        assert_eq!(b, [0, 0, 0x66, 0x55, 0x44, 0x33]);
        assert_eq!(get_le(&b, 2, 4), 0x3344_5566);
        put_le(&mut b, 4, 8, u64::MAX);
        assert_eq!(b[4..], [0xFF, 0xFF]);
        assert_eq!(get_le(&b, 5, 4), 0xFF);
        put_le(&mut b, usize::MAX, 8, 1);
        assert_eq!(get_le(&b, usize::MAX, 8), 0);
    }

    #[test]
    fn mutations_change_buffers_and_a_panicking_case_fails_the_run() {
        let mut r = Rng::new(3);
        let base = vec![0u8; 64];
        let changed = (0..200)
            .filter(|_| {
                let mut b = base.clone();
                mutate(&mut r, &mut b, &[Field(8, 4), Field(16, 2)]);
                b != base
            })
            .count();
        assert!(changed > 150, "{changed}");
        let settings = Settings {
            iters: 5,
            limit: None,
            seed: 9,
            only: None,
            keep_going: false,
        };
        let mut seeds = Vec::new();
        assert_eq!(run_with("self-test", settings, |r| seeds.push(r.next())), 5);
        seeds.dedup();
        assert_eq!(seeds.len(), 5, "every case has its own seed");
        let failed = catch_unwind(|| run_with("self-test", settings, |_| panic!("boom")));
        assert!(failed.is_err());
        let only = Settings {
            only: Some(42),
            iters: 1,
            ..settings
        };
        let mut first = 0;
        run_with("self-test", only, |r| first = r.next());
        assert_eq!(first, Rng::new(42).next(), "a case replays from its seed");
    }
}
