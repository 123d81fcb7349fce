//! The password file for SMTP AUTH (one `user:$argon2id$...` line per user) and the pool
//! that checks passwords against it with bounded memory and concurrency.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use password_hash::rand_core::OsRng;
use password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use tokio::sync::oneshot;

/// Memory cost of the hashes `hash-password` writes, in KiB (argon2id, 19 MiB, 2 passes, 1
/// lane: OWASP's recommended minimum for argon2id). With bounded concurrency a server can
/// afford it; a check takes ~50 ms of one core.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory of the hashes `hash-password` writes.
pub const PASSES: u32 = 2;
/// Largest memory cost accepted in the password file, in KiB: each running check allocates
/// that much, so a hash made elsewhere with a huge cost cannot exhaust the server's memory.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// The argon2id instance of `hash-password`, with the parameters above.
fn hasher() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(MEMORY_KIB, PASSES, 1, None)
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Users and their argon2 password hashes (PHC strings), loaded once at start.
#[derive(Debug, Default)]
pub struct Passwords {
    users: HashMap<String, String>,
    /// Checked for unknown users too, so a wrong user name costs the same time as a wrong password.
    dummy: String,
}

impl Passwords {
    /// Reads `path`; errors name the file and the line.
    pub fn load(path: &Path) -> anyhow::Result<Passwords> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading password file {}", path.display()))?;
        Passwords::parse(&text, &path.display().to_string())
    }

    /// Parses the password file text; `name` appears in errors. Only argon2 hashes with a
    /// memory cost up to [`MAX_MEMORY_KIB`] are accepted.
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Passwords> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                bail!("{name}:{}: expected `user:$argon2id$...`", i + 1);
            };
            let parsed = match PasswordHash::new(hash) {
                Ok(parsed) => parsed,
                Err(e) => bail!(
                    "{name}:{}: user `{user}`: not a PHC password hash: {e}",
                    i + 1
                ),
            };
            if !parsed.algorithm.as_str().starts_with("argon2") {
                bail!(
                    "{name}:{}: user `{user}`: `{}` is not an argon2 hash (make one with \
                     `postrider hash-password`)",
                    i + 1,
                    parsed.algorithm
                );
            }
            match Params::try_from(&parsed) {
                Ok(params) if params.m_cost() <= MAX_MEMORY_KIB => {}
                Ok(params) => bail!(
                    "{name}:{}: user `{user}`: memory cost {} KiB is above the {MAX_MEMORY_KIB} \
                     KiB a server can check at once (make a new hash with \
                     `postrider hash-password`)",
                    i + 1,
                    params.m_cost()
                ),
                Err(e) => bail!("{name}:{}: user `{user}`: argon2 parameters: {e}", i + 1),
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                bail!("{name}:{}: user `{user}` appears twice", i + 1);
            }
        }
        Ok(Passwords {
            users,
            dummy: hash_password("dummy password for timing")?,
        })
    }

    /// Whether `password` is right for `user`, in a buffer of its own.
    #[cfg(test)]
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.verify_in(user, password, &mut Vec::new())
    }

    /// Whether `password` is right for `user`, with the hash's memory in `memory` (grown to
    /// the hash's cost and kept). Slow on purpose (argon2): [`PasswordChecks`] calls it off
    /// the async threads. A checking thread reuses one buffer instead of allocating the cost anew
    /// for every check, which the allocator would keep in one arena per thread it ran on.
    pub fn verify_in(&self, user: &str, password: &str, memory: &mut Vec<Block>) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        matches_hash(hash, password.as_bytes(), memory) && known
    }
}

/// Whether `password` hashes to the PHC string `hash` (its algorithm, version, parameters and
/// salt), computed in `memory`; the comparison takes constant time.
fn matches_hash(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = parsed.version.map_or(Ok(Version::V0x13), Version::try_from);
    let (Ok(version), Some(salt), Some(expected)) = (version, parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        memory.as_mut_slice(),
    );
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

/// Hashes `password` with argon2id ([`MEMORY_KIB`], [`PASSES`], one lane) and a random salt,
/// as a PHC string for the password file.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
    Ok(hash.to_string())
}

/// One password check waiting for a thread.
struct Job {
    passwords: Arc<Passwords>,
    user: String,
    password: String,
    answer: oneshot::Sender<bool>,
}

/// The pool is full: this many checks run and as many wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

/// Checks passwords on a fixed set of threads behind a bounded queue: a flood of AUTH
/// attempts costs at most `threads` × the hash's memory cost, never a blocking thread per
/// attempt, and the attempts beyond the queue are refused at once instead of piling up.
pub struct PasswordChecks {
    queue: SyncSender<Job>,
    threads: usize,
}

impl PasswordChecks {
    /// Starts `threads` checking threads (0: one per CPU) with room for `waiting` more checks.
    pub fn start(threads: usize, waiting: usize) -> std::io::Result<PasswordChecks> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (queue, jobs) = sync_channel::<Job>(waiting);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || check_jobs(&jobs))?;
        }
        Ok(PasswordChecks { queue, threads })
    }

    /// How many checks run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether `password` is right for `user`, once a thread is free; [`Busy`] at once when
    /// the queue is full.
    pub async fn check(
        &self,
        passwords: Arc<Passwords>,
        user: &str,
        password: &str,
    ) -> Result<bool, Busy> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            passwords,
            user: user.to_owned(),
            password: password.to_owned(),
            answer,
        };
        match self.queue.try_send(job) {
            Ok(()) => answered.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A checking thread: runs jobs until the pool is dropped.
fn check_jobs(jobs: &Mutex<Receiver<Job>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // The client may have gone: then nobody reads the answer.
        let ok = job
            .passwords
            .verify_in(&job.user, &job.password, &mut memory);
        let _ = job.answer.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_right_and_wrong() {
        let text = format!("# users\nalice:{}\n\n", hash_password("s3cret").unwrap());
        let pw = Passwords::parse(&text, "pw").unwrap();
        assert!(pw.verify("alice", "s3cret"));
        assert!(!pw.verify("alice", "wrong"));
        assert!(!pw.verify("bob", "s3cret"));
        assert!(!pw.verify("bob", "dummy password for timing"));
    }

    #[test]
    fn hashes_with_other_parameters_verify_in_a_reused_buffer() {
        let salt = SaltString::generate(&mut OsRng);
        let mut memory = Vec::new();
        for (algorithm, m, t) in [
            (Algorithm::Argon2i, 8192, 3),
            (Algorithm::Argon2id, 4096, 1),
        ] {
            let argon2 = Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            );
            let hash = argon2.hash_password(b"s3cret", &salt).unwrap().to_string();
            assert!(matches_hash(&hash, b"s3cret", &mut memory), "{hash}");
            assert!(!matches_hash(&hash, b"s3cre", &mut memory), "{hash}");
        }
        assert_eq!(memory.len(), 8192, "grown to the largest cost, then kept");
        assert!(!matches_hash(
            "$argon2id$v=19$m=4096,t=1,p=1$bad",
            b"x",
            &mut memory
        ));
    }

    #[test]
    fn hash_password_writes_the_documented_parameters() {
        let hash = hash_password("s3cret").unwrap();
        assert!(
            hash.starts_with(&format!("$argon2id$v=19$m={MEMORY_KIB},t={PASSES},p=1$")),
            "{hash}"
        );
    }

    #[test]
    fn hashes_too_costly_or_not_argon2_are_refused() {
        let costly = "alice:$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHQ$\
                      m6Q7pnuQ3xGDKMs3Xt6lH8y6Z7B5qS9Zr1y1V5wQ3pA\n";
        let err = Passwords::parse(costly, "pw").unwrap_err().to_string();
        assert!(
            err.starts_with("pw:1: user `alice`: memory cost 1048576 KiB"),
            "{err}"
        );
        let scrypt = "bob:$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E\n";
        let err = Passwords::parse(scrypt, "pw").unwrap_err().to_string();
        assert!(
            err.starts_with("pw:1: user `bob`: `scrypt` is not an argon2 hash"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_pool_answers_and_refuses_beyond_its_queue() {
        let text = format!("alice:{}\n", hash_password("s3cret").unwrap());
        let pw = Arc::new(Passwords::parse(&text, "pw").unwrap());
        let pool = Arc::new(PasswordChecks::start(1, 1).unwrap());
        assert_eq!(
            pool.check(Arc::clone(&pw), "alice", "s3cret").await,
            Ok(true)
        );
        assert_eq!(
            pool.check(Arc::clone(&pw), "alice", "nope").await,
            Ok(false)
        );
        // One running, one waiting, the rest refused at once.
        let checks: Vec<_> = (0..6)
            .map(|_| {
                let (pool, pw) = (Arc::clone(&pool), Arc::clone(&pw));
                tokio::spawn(async move { pool.check(pw, "alice", "nope").await })
            })
            .collect();
        let mut answers = Vec::new();
        for check in checks {
            answers.push(check.await.unwrap());
        }
        let busy = answers.iter().filter(|a| **a == Err(Busy)).count();
        assert!(busy >= 4, "{answers:?}");
        assert!(answers.contains(&Ok(false)), "{answers:?}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = Passwords::parse("\nalice:notahash\n", "pw")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pw:2: user `alice`"), "{err}");
        let err = Passwords::parse("nocolon\n", "pw").unwrap_err().to_string();
        assert!(err.starts_with("pw:1:"), "{err}");
    }
}
