//! A message being received, kept out of memory: a message up to a threshold stays in
//! memory (most messages never go further), a larger one goes whole to an unnamed file in the
//! spool's `tmp/` (`O_TMPFILE`: it has no name, so a crash leaves nothing behind). A
//! connection sending a 25 MiB message then costs the relay a small buffer, not 25 MiB.
//!
//! Writes go to the page cache without a sync (the message is not acknowledged yet); a
//! failed write is kept and reported by [`Incoming::finish`], so the server answers 452
//! instead of accepting a message it could not hold.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The octets of one message as they arrive.
#[derive(Debug)]
pub struct Incoming {
    tmp: PathBuf,
    threshold: usize,
    memory: Vec<u8>,
    file: Option<File>,
    /// Octets in the file.
    spilled: u64,
    failed: Option<std::io::Error>,
}

impl Incoming {
    /// Collects into memory up to `threshold` octets, then into a file in `tmp`.
    pub fn new(tmp: &Path, threshold: usize) -> Incoming {
        Incoming {
            tmp: tmp.to_owned(),
            threshold,
            memory: Vec::new(),
            file: None,
            spilled: 0,
            failed: None,
        }
    }

    /// Octets of the current message so far.
    pub fn len(&self) -> u64 {
        self.spilled + self.memory.len() as u64
    }

    /// Whether nothing has been pushed since the last message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `octets`: to memory while the message fits in the threshold, else (the memory
    /// part first) to the file, and from then on straight to the file.
    pub fn push(&mut self, octets: &[u8]) {
        if octets.is_empty() || self.failed.is_some() {
            return;
        }
        if self.spilled == 0 && self.memory.len() + octets.len() <= self.threshold {
            self.memory.extend_from_slice(octets);
            return;
        }
        if let Err(e) = self.spill(octets) {
            self.failed = Some(e);
        }
        // Nothing stays in memory once the message is in the file.
        self.memory = Vec::new();
    }

    /// Writes the memory part, then `octets`, to the end of the file.
    fn spill(&mut self, octets: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile_in(&self.tmp)?),
        };
        for part in [&self.memory[..], octets] {
            file.write_all(part)?;
            self.spilled += part.len() as u64;
        }
        Ok(())
    }

    /// The whole message: what was pushed, then `rest`. Leaves this empty for the next
    /// message (the file is reused). Fails if a write or the read back failed.
    pub fn finish(&mut self, rest: Vec<u8>) -> std::io::Result<Vec<u8>> {
        if let Some(e) = self.failed.take() {
            self.clear();
            return Err(e);
        }
        if self.spilled == 0 {
            let mut message = std::mem::take(&mut self.memory);
            if message.is_empty() {
                return Ok(rest);
            }
            message.extend_from_slice(&rest);
            return Ok(message);
        }
        let total = usize::try_from(self.len())
            .unwrap_or(usize::MAX)
            .saturating_add(rest.len());
        let mut message = Vec::with_capacity(total);
        let read = match &mut self.file {
            Some(file) => file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.take(self.spilled).read_to_end(&mut message)),
            None => Ok(0),
        };
        let spilled = self.spilled;
        message.extend_from_slice(&self.memory);
        message.extend_from_slice(&rest);
        self.clear();
        match read {
            Ok(n) if n as u64 == spilled => Ok(message),
            Ok(n) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read {n} of {spilled} spilled octets back"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Forgets the current message (refused, or the transaction reset), keeping the file for
    /// the next one but not its octets.
    pub fn clear(&mut self) {
        self.memory = Vec::new();
        self.failed = None;
        if self.spilled > 0 {
            self.spilled = 0;
            let emptied = match &mut self.file {
                Some(file) => file.set_len(0).and_then(|()| file.rewind()),
                None => Ok(()),
            };
            if emptied.is_err() {
                self.file = None;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(dir.path(), 16);
        incoming.push(b"Subject: hi\r\n");
        assert_eq!(incoming.len(), 13);
        let message = incoming.finish(b"\r\nbody\r\n".to_vec()).unwrap();
        assert_eq!(message, b"Subject: hi\r\n\r\nbody\r\n");
        assert!(incoming.is_empty());
        assert!(incoming.file.is_none());
    }

    #[test]
    fn large_messages_go_to_a_file_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(dir.path(), 100);
        let mut want = Vec::new();
        for i in 0..1000u32 {
            let line = format!("line {i} of a long message\r\n");
            incoming.push(line.as_bytes());
            want.extend_from_slice(line.as_bytes());
            assert!(incoming.memory.len() <= 100);
        }
        assert_eq!(incoming.len(), want.len() as u64);
        want.extend_from_slice(b"the end\r\n");
        assert_eq!(incoming.finish(b"the end\r\n".to_vec()).unwrap(), want);
        // The unnamed file leaves no entry in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // The next message starts empty, reusing the file.
        incoming.push(&[b'x'; 300]);
        assert_eq!(incoming.finish(Vec::new()).unwrap(), vec![b'x'; 300]);
    }

    #[test]
    fn a_cleared_message_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(dir.path(), 10);
        incoming.push(&[b'a'; 50]);
        incoming.clear();
        assert!(incoming.is_empty());
        incoming.push(b"bb");
        assert_eq!(incoming.finish(b"c".to_vec()).unwrap(), b"bbc");
    }

    #[test]
    fn a_failed_spill_is_reported_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(&dir.path().join("missing"), 10);
        incoming.push(&[b'a'; 50]);
        incoming.push(&[b'b'; 50]);
        assert!(incoming.finish(Vec::new()).is_err());
        assert!(incoming.is_empty());
    }
}
