//! Running a test over many seeds, and replaying the one that fails.
//!
//! ```text
//! cargo test                                   # seeds 0..default_count
//! SOCKMSG_SIM_SEEDS=100000 cargo test --release  # a longer offline run
//! SOCKMSG_SIM_SEED=1234 cargo test               # replay seed 1234 only
//! ```

use std::any::Any;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Environment variable naming the single seed to run.
pub const SEED_ENV: &str = "SOCKMSG_SIM_SEED";
/// Environment variable overriding how many seeds (from 0) to run.
pub const SEEDS_ENV: &str = "SOCKMSG_SIM_SEEDS";

/// An environment variable that is set but unusable. Ignoring it would silently run
/// other seeds than the ones asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedEnvError {
    #[error("{SEED_ENV}={0:?} is not a u64 seed")]
    Seed(String),
    #[error("{SEEDS_ENV}={0:?} is not a u64 count")]
    Count(String),
}

/// The seeds a test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds {
    range: Range<u64>,
}

impl Seeds {
    pub fn new(range: Range<u64>) -> Self {
        Self { range }
    }

    /// Seeds from the environment: just `SOCKMSG_SIM_SEED` if set, else
    /// `0..SOCKMSG_SIM_SEEDS`, else `0..default_count`.
    pub fn from_env(default_count: u64) -> Result<Self, SeedEnvError> {
        let seed = std::env::var_os(SEED_ENV);
        let count = std::env::var_os(SEEDS_ENV);
        Self::from_vars(
            seed.as_ref().map(|s| s.to_string_lossy()).as_deref(),
            count.as_ref().map(|s| s.to_string_lossy()).as_deref(),
            default_count,
        )
    }

    /// [`from_env`](Self::from_env) with the variables' values passed in (tests cannot set
    /// the process environment safely while other tests run).
    pub fn from_vars(
        seed: Option<&str>,
        count: Option<&str>,
        default_count: u64,
    ) -> Result<Self, SeedEnvError> {
        if let Some(seed) = seed {
            let n: u64 = seed
                .trim()
                .parse()
                .map_err(|_| SeedEnvError::Seed(seed.to_owned()))?;
            return Ok(Self::new(n..n.saturating_add(1)));
        }
        let count = match count {
            Some(count) => count
                .trim()
                .parse()
                .map_err(|_| SeedEnvError::Count(count.to_owned()))?,
            None => default_count,
        };
        Ok(Self::new(0..count))
    }

    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Calls `test(seed)` for each seed in order. If one panics, panics in turn with
    /// "failing seed: N; replay with SOCKMSG_SIM_SEED=N" followed by the original message
    /// (which the panic hook has printed already, with its location).
    pub fn run(&self, mut test: impl FnMut(u64)) {
        for seed in self.range() {
            // AssertUnwindSafe: after a panic `test` is never called again; we only report.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| test(seed))) {
                match panic_message(payload.as_ref()) {
                    Some(msg) => panic!(
                        "failing seed: {seed}; replay with {SEED_ENV}={seed}\ncaused by: {msg}"
                    ),
                    None => {
                        eprintln!("failing seed: {seed}; replay with {SEED_ENV}={seed}");
                        resume_unwind(payload)
                    }
                }
            }
        }
    }
}

/// Runs `test` over the seeds [`Seeds::from_env`] selects (`0..default_count` unless the
/// environment says otherwise), naming the failing seed if one panics.
///
/// # Panics
///
/// If the environment variables are set but malformed, or if `test` panics.
pub fn for_each_seed(default_count: u64, test: impl FnMut(u64)) {
    let seeds = Seeds::from_env(default_count).unwrap_or_else(|err| panic!("{err}"));
    seeds.run(test);
}

fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
