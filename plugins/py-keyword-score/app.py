"""py-keyword-score: weighted keyword and regex scoring of the Subject and the body text.

A Postrider data-stage plugin in Python, built with componentize-py (see build.sh).

Every rule that matches adds its weight (negative weights are allowed: ham signs) once per
match, up to the rule's `max_hits`. At or above `threshold` the message is refused with
`550 5.7.1`; at or above `quarantine` (optional, below `threshold`) it is accepted into
quarantine; otherwise it is accepted with an `X-Spam-Score` header (any such header the
message already carries is removed first, so senders cannot forge it).

Config (the plugin's `config` table, given to `init` as JSON):

    threshold       number, required: refuse at or above this score
    quarantine      number, optional: quarantine at or above this score (must be < threshold)
    header          header name, default "X-Spam-Score"
    max_body_bytes  how much decoded body text to read, default 65536 (0: subject only)
    reply           reject text, default "Message refused as spam"
    rules           list, at least one, of tables:
        pattern         a keyword (matched as a whole word or phrase) or, with regex = true,
                        a Python regular expression
        weight          number added per match
        name            shown in the header, default the pattern
        regex           bool, default false
        case_sensitive  bool, default false
        where           "subject", "body" or "both" (default)
        max_hits        most matches counted, default 1

Example:

    config = { threshold = 5, quarantine = 3, rules = [
        { pattern = "viagra", weight = 4 },
        { pattern = "act now", weight = 2, where = "subject" },
        { name = "money", pattern = '\\$\\d{1,3}(,\\d{3})+', regex = true, weight = 1.5, max_hits = 3 },
        { pattern = "unsubscribe", weight = -1, where = "body" },
    ] }
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

TOP_KEYS = {"threshold", "quarantine", "header", "max_body_bytes", "reply", "rules"}
RULE_KEYS = {"pattern", "weight", "name", "regex", "case_sensitive", "where", "max_hits"}
HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # printable ASCII without ':'
MAX_TEXT = 200  # longest reply text we send (the host allows 400)


class ConfigError(Exception):
    pass


def _number(table, key, where, default=None):
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: `{key}` is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: `{key}` must be a number, not {value!r}")
    return float(value)


def _bool(table, key, where, default):
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: `{key}` must be true or false, not {value!r}")
    return value


def _string(table, key, where, default):
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: `{key}` must be a non-empty string, not {value!r}")
    return value


class Rule:
    def __init__(self, index, table):
        where = f"rules[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table, not {table!r}")
        unknown = sorted(set(table) - RULE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key `{unknown[0]}`")
        pattern = _string(table, "pattern", where, None)
        self.weight = _number(table, "weight", where)
        self.name = _string(table, "name", where, pattern)
        regex = _bool(table, "regex", where, False)
        flags = 0 if _bool(table, "case_sensitive", where, False) else re.IGNORECASE
        self.where = table.get("where", "both")
        if self.where not in ("subject", "body", "both"):
            raise ConfigError(f"{where}: `where` must be subject, body or both, not {self.where!r}")
        max_hits = table.get("max_hits", 1)
        if isinstance(max_hits, bool) or not isinstance(max_hits, int) or max_hits < 1:
            raise ConfigError(f"{where}: `max_hits` must be a whole number >= 1")
        self.max_hits = max_hits
        if not regex:
            # A keyword or phrase: whole words, any run of white space between them.
            words = [re.escape(w) for w in pattern.split()]
            pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
        try:
            self.regex = re.compile(pattern, flags)
        except re.error as e:
            raise ConfigError(f"{where}: bad regular expression {pattern!r}: {e}") from None

    def hits(self, subject, body):
        n = 0
        if self.where != "body":
            n += sum(1 for _ in zip(range(self.max_hits), self.regex.finditer(subject)))
        if self.where != "subject" and n < self.max_hits:
            n += sum(1 for _ in zip(range(self.max_hits - n), self.regex.finditer(body)))
        return n


class Config:
    def __init__(self, text):
        try:
            table = json.loads(text or "{}")
        except ValueError as e:
            raise ConfigError(f"config is not JSON: {e}") from None
        if not isinstance(table, dict):
            raise ConfigError("config must be a table")
        unknown = sorted(set(table) - TOP_KEYS)
        if unknown:
            raise ConfigError(f"unknown key `{unknown[0]}`")
        self.threshold = _number(table, "threshold", "config")
        self.quarantine = None
        if "quarantine" in table:
            self.quarantine = _number(table, "quarantine", "config")
            if self.quarantine >= self.threshold:
                raise ConfigError("config: `quarantine` must be below `threshold`")
        self.header = _string(table, "header", "config", "X-Spam-Score")
        if not HEADER_NAME.match(self.header):
            raise ConfigError(f"config: bad header name {self.header!r}")
        max_body = table.get("max_body_bytes", 65536)
        if isinstance(max_body, bool) or not isinstance(max_body, int) or not 0 <= max_body <= 1 << 24:
            raise ConfigError("config: `max_body_bytes` must be a whole number from 0 to 16777216")
        self.max_body_bytes = max_body
        self.reply = _string(table, "reply", "config", "Message refused as spam")
        if any(c < " " or c == "\x7f" for c in self.reply):
            raise ConfigError("config: `reply` must be one line of printable text")
        rules = table.get("rules")
        if not isinstance(rules, list) or not rules:
            raise ConfigError("config: `rules` must be a non-empty list")
        self.rules = [Rule(i, r) for i, r in enumerate(rules)]


def fmt(score):
    """A score as short text: 2, 2.5, -1.25."""
    text = f"{score:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def score(config, subject, body):
    """(score, [(rule name, hits)]) of a subject and body text."""
    total = 0.0
    matched = []
    for rule in config.rules:
        n = rule.hits(subject, body)
        if n:
            total += rule.weight * n
            matched.append((rule.name, n))
    return round(total, 4), matched


CONTINUE = types.Verdict_Continue()


def scored_outcome(c, msg):
    """The data-stage outcome for a message under config c."""
    subject = " ".join(msg.header("Subject"))
    body = msg.text(c.max_body_bytes) if c.max_body_bytes else ""
    total, matched = score(c, subject, body)
    rules = ",".join(name if n == 1 else f"{name}*{n}" for name, n in matched)
    summary = f"score {fmt(total)} (threshold {fmt(c.threshold)})"
    if total >= c.threshold:
        log.log(log.Level.INFO, f"refused: {summary}; rules {rules}")
        text = f"{c.reply}: {summary}"[:MAX_TEXT]
        verdict = types.Verdict_Reject(types.Reply(550, "5.7.1", text))
        return types.DataOutcome(verdict, [], None)
    value = f"{fmt(total)}; threshold={fmt(c.threshold)}"
    if rules:
        value += f"; rules={rules}"
    edits = [
        types.HeaderEdit_Remove(c.header),
        types.HeaderEdit_Prepend(types.Header(c.header, value[:900])),
    ]
    quarantine = None
    if c.quarantine is not None and total >= c.quarantine:
        quarantine = f"spam {summary}"[:MAX_TEXT]
    return types.DataOutcome(CONTINUE, edits, quarantine)


# The parsed config of this instance. componentize-py makes a new `Filter` object for every
# call, so state that init sets up lives at module level (one instance per transaction; init
# runs first in each).
CONFIG = None


class Filter(exports.Filter):
    def init(self, config):
        global CONFIG
        try:
            CONFIG = Config(config)
        except ConfigError as e:
            raise Err(f"py-keyword-score: {e}")
        return types.Stages.DATA

    def on_data(self, conn, env, msg):
        try:
            return scored_outcome(CONFIG, msg)
        except Exception as e:
            # An exception traps the instance (the host applies failure_policy); say why first.
            log.log(log.Level.ERROR, f"py-keyword-score: {type(e).__name__}: {e}")
            raise

    # Only the data stage is asked for (see init); the host never calls these.
    def on_connect(self, conn):
        return CONTINUE

    def on_helo(self, conn, helo):
        return CONTINUE

    def on_mail_from(self, conn, env):
        return CONTINUE

    def on_rcpt(self, conn, env, rcpt):
        return types.RcptOutcome(CONTINUE, None)

    def on_route(self, conn, env, rcpt):
        return types.Route_Mx()
