//! The password file for SMTP AUTH: one `user:$argon2id$...` line per user.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use argon2::Argon2;
use password_hash::rand_core::OsRng;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

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

    /// Parses the password file text; `name` appears in errors.
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
            if let Err(e) = PasswordHash::new(hash) {
                bail!(
                    "{name}:{}: user `{user}`: not a PHC password hash: {e}",
                    i + 1
                );
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

    /// Whether `password` is right for `user`. Slow on purpose (argon2): call off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

/// Hashes `password` with argon2id and a random salt, as a PHC string for the password file.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
    Ok(hash.to_string())
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
    fn errors_name_file_and_line() {
        let err = Passwords::parse("\nalice:notahash\n", "pw")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pw:2: user `alice`"), "{err}");
        let err = Passwords::parse("nocolon\n", "pw").unwrap_err().to_string();
        assert!(err.starts_with("pw:1:"), "{err}");
    }
}
