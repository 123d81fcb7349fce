//! Incremental receivers for message content: DATA (dot-terminated, RFC 5321 §4.1.4)
//! and BDAT chunks (RFC 3030).
//!
//! Both hand their octets to one content checker that enforces the rules shared
//! by the two transfer modes: no bare CR or LF (anti-smuggling), no NUL, 1000-octet
//! lines, and the message and header size limits. A failed message keeps being
//! consumed to its end, so the session stays in sync with the client.

use crate::reply::Reply;

/// Maximum line length in message content, CRLF included (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// `bytes` with every bare CR or LF made a CRLF, as DATA delivers text written with other
/// line ends (the harness's messages, plugins' and milters' new bodies).
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// What to do with a CR or LF that is not part of a CRLF pair (`[limits] line_endings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum LineEndings {
    /// Fail the message (550 5.6.0); the safe default against SMTP smuggling.
    #[default]
    Reject,
    /// Store bare CR and bare LF as CRLF. The end of DATA is still only a raw CRLF.CRLF.
    Normalize,
}

/// Limits applied while receiving one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum stored message size in octets.
    pub max_size: u64,
    /// Maximum size of the header section (up to the first empty line).
    pub max_header_size: usize,
    /// Treatment of bare CR and LF.
    pub line_endings: LineEndings,
}

/// Why a received message is refused; the first problem found wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A CR or LF outside a CRLF pair, under [`LineEndings::Reject`].
    #[error("bare CR or LF in message")]
    BareLineEnding,
    /// A NUL octet.
    #[error("NUL octet in message")]
    Nul,
    /// A line longer than 1000 octets including CRLF.
    #[error("line longer than 1000 octets")]
    LineTooLong,
    /// The message exceeds the size limit.
    #[error("message too large")]
    TooLarge,
    /// The header section exceeds its size limit.
    #[error("header section too large")]
    HeaderTooLarge,
}

impl DataError {
    /// The reply that ends the failed transaction.
    ///
    /// Bare line endings and NUL: `550 5.6.0`; long lines: `500 5.5.2 Line too long`
    /// (RFC 5321 §4.5.3.1.6 wording); size and header limits: `552 5.3.4`.
    pub fn reply(&self) -> Reply {
        let (code, e, text) = match self {
            Self::BareLineEnding => (550, (5, 6, 0), "Message contains bare CR or LF characters"),
            Self::Nul => (550, (5, 6, 0), "Message contains NUL characters"),
            Self::LineTooLong => (
                500,
                (5, 5, 2),
                "Line too long (maximum 1000 octets including CRLF)",
            ),
            Self::TooLarge => (
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            Self::HeaderTooLarge => (552, (5, 3, 4), "Message header section too large"),
        };
        Reply::local(code, e, text)
    }
}

impl From<DataError> for Reply {
    fn from(err: DataError) -> Self {
        err.reply()
    }
}

/// How much input a receiver took and whether its unit (message or chunk) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Octets consumed from the slice given.
    pub consumed: usize,
    /// True once the message (DATA) or chunk (BDAT) is complete.
    pub done: bool,
}

/// Canonical message store with the content rules shared by DATA and BDAT.
#[derive(Debug)]
struct Content {
    limits: Limits,
    data: Vec<u8>,
    size: u64,
    line_len: usize,
    in_header: bool,
    header_len: usize,
    failure: Option<DataError>,
}

impl Content {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            data: Vec::new(),
            size: 0,
            line_len: 0,
            in_header: true,
            header_len: 0,
            failure: None,
        }
    }

    fn fail(&mut self, err: DataError) {
        if self.failure.is_none() {
            self.failure = Some(err);
            // Nothing more is stored; free what was kept.
            self.data = Vec::new();
        }
    }

    /// One octet of line content.
    fn octet(&mut self, b: u8) {
        if b == 0 {
            self.fail(DataError::Nul);
        }
        self.line_len += 1;
        if self.line_len + 2 > MAX_TEXT_LINE {
            self.fail(DataError::LineTooLong);
        }
        self.store(&[b]);
    }

    /// Takes the line content at the start of `input`, up to the first CR, LF or NUL (which
    /// need the caller's state machine), as [`Content::text_run`]; returns its length.
    fn take_text_run(&mut self, input: &[u8]) -> usize {
        let run = input
            .iter()
            .position(|&c| matches!(c, b'\r' | b'\n' | 0))
            .unwrap_or(input.len());
        if run > 0 {
            self.text_run(input.get(..run).unwrap_or_default());
        }
        run
    }

    /// A run of line content without CR, LF or NUL: the same as [`Content::octet`] for each
    /// octet, in one copy when no limit is crossed inside the run (the common case).
    fn text_run(&mut self, run: &[u8]) {
        let n = run.len();
        let fits = self.failure.is_none()
            && self.line_len + n + 2 <= MAX_TEXT_LINE
            && (!self.in_header
                || self.header_len.saturating_add(n) <= self.limits.max_header_size)
            && self.size.saturating_add(n as u64) <= self.limits.max_size;
        if fits {
            self.line_len += n;
            self.size += n as u64;
            if self.in_header {
                self.header_len += n;
            }
            self.data.extend_from_slice(run);
        } else {
            for &b in run {
                self.octet(b);
            }
        }
    }

    /// A real CRLF line ending.
    fn crlf(&mut self) {
        if self.line_len == 0 {
            // The empty line separating header and body is not counted in the header.
            self.in_header = false;
        }
        self.store(b"\r\n");
        self.line_len = 0;
    }

    /// A CR or LF outside a CRLF pair.
    fn bare(&mut self) {
        match self.limits.line_endings {
            LineEndings::Reject => {
                self.fail(DataError::BareLineEnding);
                self.line_len = 0;
            }
            LineEndings::Normalize => self.crlf(),
        }
    }

    fn store(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.in_header {
            self.header_len = self.header_len.saturating_add(bytes.len());
            if self.header_len > self.limits.max_header_size {
                self.fail(DataError::HeaderTooLarge);
            }
        }
        if self.size > self.limits.max_size {
            self.fail(DataError::TooLarge);
        }
        if self.failure.is_none() {
            self.data.extend_from_slice(bytes);
        }
    }

    /// The stored octets not taken yet.
    fn pending(&self) -> &[u8] {
        &self.data
    }

    /// Forgets the stored octets (the caller took them), keeping the buffer.
    fn clear_pending(&mut self) {
        self.data.clear();
    }

    fn finish(self) -> Result<Vec<u8>, DataError> {
        match self.failure {
            Some(err) => Err(err),
            None => Ok(self.data),
        }
    }
}

/// Position of the DATA receiver relative to raw CRLF line boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// Just after a raw CRLF (or at the start): a `.` here is special.
    LineStart,
    /// Saw `.` at a raw line start.
    Dot,
    /// Saw `.` CR at a raw line start: LF ends the message.
    DotCr,
    /// Inside a line.
    Text,
    /// Saw CR inside a line.
    Cr,
    /// Saw the terminating CRLF.CRLF.
    Done,
}

/// Receives DATA content up to the terminating `<CRLF>.<CRLF>`, removing dot-stuffing.
///
/// Only a raw CRLF "." CRLF ends the message: bare CR or LF never starts a line for
/// end detection or dot-unstuffing, whatever the [`LineEndings`] policy.
#[derive(Debug)]
pub struct DataReceiver {
    state: DotState,
    content: Content,
}

impl DataReceiver {
    /// Starts receiving a message right after the 354 reply.
    pub fn new(limits: Limits) -> Self {
        Self {
            state: DotState::LineStart,
            content: Content::new(limits),
        }
    }

    /// Consumes input up to and including the end of the message.
    pub fn receive(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            if self.state == DotState::Text {
                // Inside a line, only CR, LF and NUL need the state machine.
                let run = self
                    .content
                    .take_text_run(input.get(i..).unwrap_or_default());
                if run > 0 {
                    i += run;
                    continue;
                }
            }
            self.step(b);
            i += 1;
            if self.state == DotState::Done {
                return Progress {
                    consumed: i,
                    done: true,
                };
            }
        }
        Progress {
            consumed: input.len(),
            done: self.state == DotState::Done,
        }
    }

    /// True once the terminating CRLF.CRLF has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == DotState::Done
    }

    /// True if the message already broke a rule (it is still consumed to its end).
    pub fn has_failed(&self) -> bool {
        self.content.failure.is_some()
    }

    /// The stored message (canonical CRLF text, without the final ".\r\n") or the failure.
    /// After [`DataReceiver::clear_pending`], only what was stored since.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        self.content.finish()
    }

    /// What was stored since the last [`DataReceiver::clear_pending`], so a caller can move
    /// a large message out of memory while it arrives.
    pub fn pending(&self) -> &[u8] {
        self.content.pending()
    }

    /// Forgets the stored octets the caller has taken; the limits still count them.
    pub fn clear_pending(&mut self) {
        self.content.clear_pending();
    }

    fn step(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (DotState::Done, _) => DotState::Done,
            (DotState::LineStart, b'.') => DotState::Dot,
            (DotState::Dot, b'\r') => DotState::DotCr,
            (DotState::DotCr, b'\n') => DotState::Done,
            (DotState::DotCr, b) => {
                // ".<CR>" then something else: the dot was stuffing, the CR is bare.
                self.content.bare();
                self.text(b)
            }
            (DotState::Cr, b'\n') => {
                self.content.crlf();
                DotState::LineStart
            }
            (DotState::Cr, b) => {
                self.content.bare();
                self.text(b)
            }
            // LineStart and Text behave alike; Dot drops the stuffed dot.
            (DotState::LineStart | DotState::Dot | DotState::Text, b) => self.text(b),
        };
    }

    /// Handles an octet inside a line.
    fn text(&mut self, b: u8) -> DotState {
        match b {
            b'\r' => DotState::Cr,
            b'\n' => {
                self.content.bare();
                DotState::Text
            }
            b => {
                self.content.octet(b);
                DotState::Text
            }
        }
    }
}

/// Receives a BDAT transaction chunk by chunk; state carries across chunk boundaries.
#[derive(Debug)]
pub struct BdatReceiver {
    content: Content,
    pending_cr: bool,
    remaining: u64,
    last: bool,
    chunk_size: u64,
}

impl BdatReceiver {
    /// Starts a BDAT transaction; call [`BdatReceiver::start_chunk`] for each BDAT command.
    pub fn new(limits: Limits) -> Self {
        Self {
            content: Content::new(limits),
            pending_cr: false,
            remaining: 0,
            last: false,
            chunk_size: 0,
        }
    }

    /// Expects `size` more octets; `last` marks the final chunk.
    pub fn start_chunk(&mut self, size: u64, last: bool) {
        self.remaining = size;
        self.chunk_size = size;
        self.last = last;
        if last && size == 0 {
            self.end_of_message();
        }
    }

    /// Consumes up to the rest of the current chunk.
    pub fn receive(&mut self, input: &[u8]) -> Progress {
        let take = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let chunk = input.get(..take).unwrap_or_default();
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if !self.pending_cr {
                // Only CR, LF and NUL need the state machine.
                let run = self
                    .content
                    .take_text_run(chunk.get(i..).unwrap_or_default());
                if run > 0 {
                    i += run;
                    continue;
                }
            }
            self.step(b);
            i += 1;
        }
        self.remaining -= take as u64;
        if self.remaining == 0 && take > 0 && self.last {
            self.end_of_message();
        }
        Progress {
            consumed: take,
            done: self.remaining == 0,
        }
    }

    /// Octets announced by the current chunk's BDAT command.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// True if the current chunk is the last one.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// True if the message already broke a rule.
    pub fn has_failed(&self) -> bool {
        self.content.failure.is_some()
    }

    /// The failure so far, if any.
    pub fn failure(&self) -> Option<DataError> {
        self.content.failure
    }

    /// What was stored since the last [`BdatReceiver::clear_pending`].
    pub fn pending(&self) -> &[u8] {
        self.content.pending()
    }

    /// Forgets the stored octets the caller has taken; the limits still count them.
    pub fn clear_pending(&mut self) {
        self.content.clear_pending();
    }

    /// The stored message (canonical CRLF text) or the failure.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        self.content.finish()
    }

    fn step(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' {
                self.content.crlf();
                return;
            }
            self.content.bare();
        }
        match b {
            b'\r' => self.pending_cr = true,
            b'\n' => self.content.bare(),
            b => self.content.octet(b),
        }
    }

    /// A CR at the very end of the message has no LF to pair with.
    fn end_of_message(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            self.content.bare();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn limits(policy: LineEndings) -> Limits {
        Limits {
            max_size: 1 << 20,
            max_header_size: 1 << 16,
            line_endings: policy,
        }
    }

    /// Feeds `input` in pieces of `step` octets; returns the result and octets consumed.
    fn data(
        input: &[u8],
        limits: Limits,
        step: usize,
    ) -> (Option<Result<Vec<u8>, DataError>>, usize) {
        let mut rx = DataReceiver::new(limits);
        let mut used = 0;
        for piece in input.chunks(step.max(1)) {
            let p = rx.receive(piece);
            used += p.consumed;
            if p.done {
                return (Some(rx.finish()), used);
            }
            assert_eq!(p.consumed, piece.len());
        }
        (None, used)
    }

    /// The octet-at-a-time state machine alone, without the run fast path of `receive`.
    fn data_octet_by_octet(
        input: &[u8],
        limits: Limits,
    ) -> (Option<Result<Vec<u8>, DataError>>, usize) {
        let mut rx = DataReceiver::new(limits);
        for (i, &b) in input.iter().enumerate() {
            rx.step(b);
            if rx.state == DotState::Done {
                return (Some(rx.finish()), i + 1);
            }
        }
        (None, input.len())
    }

    /// Random messages over an alphabet of the octets that matter, with lines near the
    /// 1000-octet limit and header/size limits crossed inside runs, with limits to match.
    fn random_messages() -> Vec<(Vec<u8>, Limits)> {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        (0..3000)
            .map(|case| {
                let len = (next() % 2600) as usize;
                // One case in four has long lines (CR and LF rare), the rest short ones.
                let rate = if case % 4 == 0 { 1500 } else { 40 };
                let mut input: Vec<u8> = (0..len)
                    .map(|_| match next() % rate {
                        0 => b'\r',
                        1 => b'\n',
                        2 => b'.',
                        3 if case % 5 == 0 => 0,
                        _ => b'a',
                    })
                    .collect();
                if case % 7 == 0 {
                    // Lines right at the length limit (998 octets of text plus CRLF) and
                    // around it.
                    input.clear();
                    for _ in 0..3 {
                        input.resize(input.len() + 995 + (next() % 7) as usize, b'a');
                        input.extend_from_slice(b"\r\n");
                    }
                }
                if case % 3 == 0 {
                    input.extend_from_slice(b"\r\n.\r\n");
                }
                let limits = Limits {
                    max_size: 200 + next() % 2500,
                    max_header_size: 50 + (next() % 3000) as usize,
                    line_endings: if case % 2 == 0 {
                        LineEndings::Reject
                    } else {
                        LineEndings::Normalize
                    },
                };
                (input, limits)
            })
            .collect()
    }

    #[test]
    fn runs_give_what_octets_give() {
        // Fed in pieces of several sizes, the fast path must agree with the state machine
        // in every detail.
        for (case, (input, limits)) in random_messages().into_iter().enumerate() {
            let want = data_octet_by_octet(&input, limits);
            for step in [1, 7, 64, 1000, input.len().max(1)] {
                assert_eq!(data(&input, limits, step), want, "case {case}, step {step}");
            }
        }
    }

    /// The BDAT state machine alone, one chunk, without the run fast path of `receive`.
    fn bdat_octet_by_octet(input: &[u8], limits: Limits) -> Result<Vec<u8>, DataError> {
        let mut rx = BdatReceiver::new(limits);
        rx.start_chunk(input.len() as u64, true);
        for &b in input {
            rx.step(b);
        }
        rx.end_of_message();
        rx.finish()
    }

    #[test]
    fn bdat_runs_give_what_octets_give() {
        // The same messages as BDAT chunks of several sizes (a CR at a chunk's end pairs
        // with an LF at the next one's start), each received in pieces of several sizes.
        for (case, (input, limits)) in random_messages().into_iter().enumerate() {
            let want = bdat_octet_by_octet(&input, limits);
            for chunk in [1, 13, 500, input.len().max(1)] {
                for step in [1, 64, input.len().max(1)] {
                    let mut rx = BdatReceiver::new(limits);
                    let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
                    for (n, c) in chunks.iter().enumerate() {
                        rx.start_chunk(c.len() as u64, n + 1 == chunks.len());
                        for piece in c.chunks(step) {
                            assert_eq!(rx.receive(piece).consumed, piece.len());
                        }
                    }
                    if chunks.is_empty() {
                        rx.start_chunk(0, true);
                    }
                    assert_eq!(rx.finish(), want, "case {case}, chunk {chunk}, step {step}");
                }
            }
        }
    }

    #[test]
    fn simple_message_and_unstuffing() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n.\r\nafter";
        for step in 1..input.len() {
            let (res, used) = data(input, limits(LineEndings::Reject), step);
            assert_eq!(
                res,
                Some(Ok(b"Subject: x\r\n\r\n.leading dot\r\n".to_vec()))
            );
            assert_eq!(used, input.len() - 8);
        }
    }

    #[test]
    fn empty_message_ends_at_first_line() {
        let (res, used) = data(b".\r\nMAIL", limits(LineEndings::Reject), 100);
        assert_eq!(res, Some(Ok(Vec::new())));
        assert_eq!(used, 3);
    }

    #[test]
    fn bare_endings_never_terminate() {
        for seq in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\r\n.\r",
        ] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"X\r\n.\r\n");
            let (res, used) = data(&input, limits(LineEndings::Reject), 100);
            assert_eq!(res, Some(Err(DataError::BareLineEnding)), "{seq:?}");
            assert_eq!(used, input.len(), "{seq:?}");
            let (res, used) = data(&input, limits(LineEndings::Normalize), 100);
            assert!(matches!(res, Some(Ok(_))), "{seq:?}");
            assert_eq!(used, input.len(), "{seq:?}");
        }
    }

    #[test]
    fn normalize_converts_to_crlf() {
        let (res, _) = data(
            b"a\nb\rc\r\r\nd\r\n.\r\n",
            limits(LineEndings::Normalize),
            100,
        );
        assert_eq!(res, Some(Ok(b"a\r\nb\r\nc\r\n\r\nd\r\n".to_vec())));
        // A normalized line start is not a raw line start: no unstuffing, no end.
        let (res, _) = data(b"a\n.\nb\r\n.\r\n", limits(LineEndings::Normalize), 100);
        assert_eq!(res, Some(Ok(b"a\r\n.\r\nb\r\n".to_vec())));
    }

    #[test]
    fn nul_fails() {
        let (res, _) = data(b"a\0b\r\n.\r\n", limits(LineEndings::Reject), 100);
        assert_eq!(res, Some(Err(DataError::Nul)));
        let (res, _) = data(b"x\r\n.\0\r\n.\r\n", limits(LineEndings::Reject), 100);
        assert_eq!(res, Some(Err(DataError::Nul)));
    }

    #[test]
    fn line_length_boundary() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(matches!(
            data(&ok, limits(LineEndings::Reject), 100).0,
            Some(Ok(_))
        ));
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            data(&long, limits(LineEndings::Reject), 100).0,
            Some(Err(DataError::LineTooLong))
        );
        // The stuffed dot does not count.
        let stuffed = [b".".to_vec(), vec![b'.'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(matches!(
            data(&stuffed, limits(LineEndings::Reject), 100).0,
            Some(Ok(_))
        ));
    }

    #[test]
    fn size_and_header_limits() {
        let small = Limits {
            max_size: 10,
            max_header_size: 1000,
            line_endings: LineEndings::Reject,
        };
        assert_eq!(
            data(b"12345678\r\n.\r\n", small, 3).0,
            Some(Ok(b"12345678\r\n".to_vec()))
        );
        assert_eq!(
            data(b"123456789\r\n.\r\n", small, 3).0,
            Some(Err(DataError::TooLarge))
        );
        let headers = Limits {
            max_size: 1000,
            max_header_size: 10,
            line_endings: LineEndings::Reject,
        };
        assert!(matches!(
            data(b"A: 1234\r\n\r\nbody is long enough\r\n.\r\n", headers, 3).0,
            Some(Ok(_))
        ));
        assert_eq!(
            data(b"A: 123456\r\n\r\nbody\r\n.\r\n", headers, 3).0,
            Some(Err(DataError::HeaderTooLarge))
        );
    }

    #[test]
    fn failure_replies() {
        let codes: Vec<_> = [
            DataError::BareLineEnding,
            DataError::Nul,
            DataError::LineTooLong,
            DataError::TooLarge,
            DataError::HeaderTooLarge,
        ]
        .iter()
        .map(|e| {
            (
                e.reply().code(),
                e.reply().enhanced().map(|c| c.to_string()),
            )
        })
        .collect();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            codes,
            [
                (550, s("5.6.0")),
                (550, s("5.6.0")),
                (500, s("5.5.2")),
                (552, s("5.3.4")),
                (552, s("5.3.4"))
            ]
        );
    }

    fn bdat(chunks: &[(&[u8], bool)], limits: Limits) -> Result<Vec<u8>, DataError> {
        let mut rx = BdatReceiver::new(limits);
        for (chunk, last) in chunks {
            rx.start_chunk(chunk.len() as u64, *last);
            let mut extra = chunk.to_vec();
            extra.extend_from_slice(b"NEXT");
            let p = rx.receive(&extra);
            assert_eq!(
                p,
                Progress {
                    consumed: chunk.len(),
                    done: true
                }
            );
        }
        rx.finish()
    }

    #[test]
    fn bdat_chunks() {
        let l = limits(LineEndings::Reject);
        assert_eq!(
            bdat(&[(b"a\r", false), (b"\nb.\r\n", true)], l),
            Ok(b"a\r\nb.\r\n".to_vec())
        );
        assert_eq!(
            bdat(&[(b"a\r", false), (b"b", true)], l),
            Err(DataError::BareLineEnding)
        );
        assert_eq!(bdat(&[(b"a\r", true)], l), Err(DataError::BareLineEnding));
        assert_eq!(
            bdat(&[(b"a\r", false), (b"", true)], l),
            Err(DataError::BareLineEnding)
        );
        assert_eq!(bdat(&[(b"a\nb", true)], l), Err(DataError::BareLineEnding));
        assert_eq!(bdat(&[(b"a\0", true)], l), Err(DataError::Nul));
        assert_eq!(
            bdat(&[(b"a\nb\r", true)], limits(LineEndings::Normalize)),
            Ok(b"a\r\nb\r\n".to_vec())
        );
        // Line length counts across chunks.
        let half = vec![b'x'; 500];
        assert_eq!(
            bdat(&[(&half, false), (&half, true)], l),
            Err(DataError::LineTooLong)
        );
    }
}
