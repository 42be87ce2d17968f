//! Killing worker processes inside a chosen phase of their work, and
//! knowing where each kill landed.
//!
//! A worker calls [`announce`] when it enters a phase (writing, capture,
//! push, ...): one line on stdout with the phase and how long the previous
//! one took. The parent reads the lines as they come, waits for the phase it
//! aims at, sleeps for a random part of a duration that phase has taken
//! before, and sends SIGKILL. The last line the worker wrote is the phase
//! the kill landed in; [`Killer`] counts them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::BoxError;

/// The phase of a worker that has not announced one yet (starting up).
pub const STARTUP: &str = "startup";

/// How long the parent waits for a worker's next announcement.
const STALL: Duration = Duration::from_secs(120);

/// Durations kept per phase.
const KEPT: usize = 64;

/// Worker side: say on stdout that the worker enters `phase` (nothing if it
/// is already in it), with how long the previous phase took.
pub fn announce(phase: &'static str) {
    static CURRENT: Mutex<Option<(&'static str, Instant)>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if current.is_some_and(|(p, _)| p == phase) {
        return;
    }
    let took = current.map_or(0, |(_, since)| since.elapsed().as_micros());
    *current = Some((phase, Instant::now()));
    // Stdout is line-buffered: the line is in the pipe before the phase
    // starts.
    println!("phase {phase} {took}");
}

/// The seed of a kill test: `TIDESYNC_KILL_SEED` if set (to replay a run),
/// else a random one. The test prints it.
pub fn kill_seed() -> u64 {
    std::env::var("TIDESYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A running worker whose announcements are read on a thread.
pub struct Worker {
    child: Child,
    lines: Receiver<String>,
    /// The phase it announced last.
    phase: String,
}

impl Worker {
    /// Spawn `cmd` with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Result<Worker, BoxError> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            lines,
            phase: STARTUP.to_owned(),
        })
    }

    /// The worker's stderr and exit status, once it has ended.
    fn failure(mut self) -> String {
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        format!(
            "worker ended by itself ({status}) in phase {}: {err}",
            self.phase
        )
    }
}

/// Kills workers and counts where the kills landed.
pub struct Killer {
    pub rng: StdRng,
    /// Recent durations of each phase, as the workers measured them.
    durations: BTreeMap<String, Vec<Duration>>,
    /// Kills per phase they landed in.
    landed: BTreeMap<String, u32>,
    /// Kills per phase they aimed at.
    aimed: BTreeMap<String, u32>,
}

impl Killer {
    pub fn new(seed: u64) -> Killer {
        Killer {
            rng: StdRng::seed_from_u64(seed),
            durations: BTreeMap::new(),
            landed: BTreeMap::new(),
            aimed: BTreeMap::new(),
        }
    }

    /// Take one announcement: the worker entered a phase; record how long
    /// the one before took.
    fn record(&mut self, w: &mut Worker, line: &str) {
        let mut parts = line.split(' ');
        let (Some("phase"), Some(phase), Some(took)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if w.phase != STARTUP
            && let Ok(us) = took.parse::<u64>()
        {
            let d = self.durations.entry(w.phase.clone()).or_default();
            if d.len() == KEPT {
                d.remove(0);
            }
            d.push(Duration::from_micros(us));
        }
        w.phase = phase.to_owned();
    }

    /// A random delay within a duration `phase` has taken (`default` when
    /// none was measured yet).
    fn delay_within(&mut self, phase: &str, default: Duration) -> Duration {
        let d = match self.durations.get(phase) {
            Some(d) if !d.is_empty() => d[self.rng.random_range(0..d.len())],
            _ => default,
        };
        d.mul_f64(self.rng.random::<f64>())
    }

    /// Wait until the worker enters `phase` for the `nth` time, then kill it
    /// after a random part of a duration that phase has taken. Returns the
    /// phase the kill landed in.
    pub fn kill_in(&mut self, mut w: Worker, phase: &str, nth: u32) -> Result<String, BoxError> {
        *self.aimed.entry(phase.to_owned()).or_default() += 1;
        let mut seen = 0;
        while seen < nth {
            match w.lines.recv_timeout(STALL) {
                Ok(line) => {
                    self.record(&mut w, &line);
                    if w.phase == phase && line.starts_with("phase ") {
                        seen += 1;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(w.failure().into()),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = w.child.kill();
                    return Err(format!(
                        "worker stalled in phase {} for {STALL:?} waiting for phase {phase}",
                        w.phase
                    )
                    .into());
                }
            }
        }
        let delay = self.delay_within(phase, Duration::from_millis(5));
        std::thread::sleep(delay);
        self.kill(w)
    }

    /// Kill the worker `delay` after now, whatever it is doing. Returns the
    /// phase the kill landed in.
    pub fn kill_after(&mut self, w: Worker, delay: Duration) -> Result<String, BoxError> {
        std::thread::sleep(delay);
        self.kill(w)
    }

    fn kill(&mut self, mut w: Worker) -> Result<String, BoxError> {
        if w.child.try_wait()?.is_some() {
            // Read what it said before it ended.
            while let Ok(line) = w.lines.recv() {
                self.record(&mut w, &line);
            }
            return Err(w.failure().into());
        }
        w.child.kill()?;
        w.child.wait()?;
        // The rest of what it wrote before it died; the reader thread ends
        // at the end of the pipe.
        while let Ok(line) = w.lines.recv() {
            self.record(&mut w, &line);
        }
        *self.landed.entry(w.phase.clone()).or_default() += 1;
        Ok(w.phase)
    }

    /// Kills that landed in `phase`.
    pub fn landed(&self, phase: &str) -> u32 {
        self.landed.get(phase).copied().unwrap_or(0)
    }

    /// Per phase: the kills that landed in it, of those aimed at it, and its
    /// median duration; for the log.
    pub fn summary(&self) -> String {
        let mut phases: Vec<&String> = self
            .landed
            .keys()
            .chain(self.aimed.keys())
            .chain(self.durations.keys())
            .collect();
        phases.sort();
        phases.dedup();
        phases
            .iter()
            .map(|p| {
                let median = self.durations.get(*p).map(|d| {
                    let mut d = d.clone();
                    d.sort();
                    d[d.len() / 2]
                });
                let aimed = self.aimed.get(*p).copied().unwrap_or(0);
                let mut s = format!("{p} {} (aimed {aimed}", self.landed(p));
                if let Some(m) = median {
                    s.push_str(&format!(", takes ~{m:.1?}"));
                }
                s.push(')');
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
