// c-header-check: refuses (or flags, or quarantines) messages whose header block breaks the
// rules a mail operator relies on. A Postrider data-stage plugin in C, built with clang and
// wasi-libc against bindings generated from wit/postrider.wit (see build.sh).
//
// Checks, each reported as a short problem text:
//   * a required header is missing                    "missing Date"
//   * a header RFC 5322 allows once appears more often "2 From headers"
//   * the From display name holds an address in another domain than the From address
//     ("PayPal <service@paypal.com>" <x@evil.example>) "From display name names paypal.com"
//
// Config (the plugin's `config` table, given to init as JSON):
//   action          "reject" (default: 550 5.7.1 naming the problems), "quarantine" (accept
//                   into quarantine), or "flag" (accept; add a header listing the problems)
//   required        header names that must be present, default ["From", "Date", "Message-ID"]
//   singletons      header names allowed at most once, default the RFC 5322 list: From,
//                   Sender, Reply-To, To, Cc, Bcc, Subject, Date, Message-ID, In-Reply-To,
//                   References
//   display_name_spoof  bool, default true
//   header          the header `flag` adds, default "X-Header-Check" (any incoming header of
//                   that name is removed first, so senders cannot forge a clean result)
//   skip_authenticated  bool, default true: authenticated (submission) clients are not
//                   checked; their MSA adds Date and Message-ID
//
// Example: config = { action = "flag", required = ["From", "Date"] }

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define MAX_NAMES 32
#define MAX_NAME_LEN 76
#define MAX_PROBLEMS_TEXT 380 // the host allows 400 bytes of reply text

typedef postrider_plugin_types_verdict_t verdict_t;

enum action { ACTION_REJECT, ACTION_QUARANTINE, ACTION_FLAG };

static struct {
    enum action action;
    char required[MAX_NAMES][MAX_NAME_LEN + 1];
    int n_required;
    char singletons[MAX_NAMES][MAX_NAME_LEN + 1];
    int n_singletons;
    int display_name_spoof;
    char header[MAX_NAME_LEN + 1];
    int skip_authenticated;
} cfg;

// ---------------------------------------------------------------------------------------------
// A small JSON reader, enough for the config table: objects, arrays, strings (with escapes),
// true/false/null and numbers. Errors are reported with a message in `err`.

typedef struct {
    const char *p, *end;
    char err[200];
} json_t;

static void jerr(json_t *j, const char *fmt, ...) {
    if (j->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
}

static void jws(json_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int jpeek(json_t *j) {
    jws(j);
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

static int jeat(json_t *j, char c) {
    if (jpeek(j) == c) {
        j->p++;
        return 1;
    }
    return 0;
}

static void put_utf8(char *out, size_t cap, size_t *n, unsigned cp) {
    char b[4];
    size_t k;
    if (cp < 0x80) { b[0] = (char)cp; k = 1; }
    else if (cp < 0x800) { b[0] = (char)(0xC0 | cp >> 6); b[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
    else if (cp < 0x10000) { b[0] = (char)(0xE0 | cp >> 12); b[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); b[2] = (char)(0x80 | (cp & 0x3F)); k = 3; }
    else { b[0] = (char)(0xF0 | cp >> 18); b[1] = (char)(0x80 | ((cp >> 12) & 0x3F)); b[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); b[3] = (char)(0x80 | (cp & 0x3F)); k = 4; }
    for (size_t i = 0; i < k; i++) {
        if (*n + 1 < cap)
            out[*n] = b[i];
        (*n)++;
    }
}

static int hex4(const char *s, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        *v = *v << 4 | (unsigned)d;
    }
    return 1;
}

// Reads a string into out (NUL-terminated). Returns its length, or -1 on error; a string
// longer than cap-1 is an error naming `what`.
static int jstring(json_t *j, char *out, size_t cap, const char *what) {
    if (!jeat(j, '"')) {
        jerr(j, "%s must be a string", what);
        return -1;
    }
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '\\') {
            if (j->p >= j->end) break;
            char e = *j->p++;
            unsigned cp;
            switch (e) {
            case '"': case '\\': case '/': cp = (unsigned char)e; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (j->end - j->p < 4 || !hex4(j->p, &cp)) {
                    jerr(j, "bad \\u escape in %s", what);
                    return -1;
                }
                j->p += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && j->end - j->p >= 6 && j->p[0] == '\\' &&
                    j->p[1] == 'u') {
                    unsigned lo;
                    if (hex4(j->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        j->p += 6;
                    }
                }
                break;
            default:
                jerr(j, "bad escape in %s", what);
                return -1;
            }
            put_utf8(out, cap, &n, cp);
        } else {
            if (n + 1 < cap)
                out[n] = (char)c;
            n++;
        }
    }
    if (!jeat(j, '"')) {
        jerr(j, "unterminated string in %s", what);
        return -1;
    }
    if (n + 1 > cap) {
        jerr(j, "%s is too long", what);
        return -1;
    }
    out[n] = 0;
    return (int)n;
}

static int jbool(json_t *j, const char *what) {
    jws(j);
    if (j->end - j->p >= 4 && !memcmp(j->p, "true", 4)) { j->p += 4; return 1; }
    if (j->end - j->p >= 5 && !memcmp(j->p, "false", 5)) { j->p += 5; return 0; }
    jerr(j, "%s must be true or false", what);
    return -1;
}

// Reads an array of header names.
static void jnames(json_t *j, char names[][MAX_NAME_LEN + 1], int *count, const char *what) {
    *count = 0;
    if (!jeat(j, '[')) {
        jerr(j, "%s must be a list of header names", what);
        return;
    }
    if (jeat(j, ']'))
        return;
    do {
        if (*count == MAX_NAMES) {
            jerr(j, "%s has more than %d names", what, MAX_NAMES);
            return;
        }
        char *name = names[*count];
        if (jstring(j, name, MAX_NAME_LEN + 1, what) <= 0) {
            jerr(j, "%s: header names must be non-empty strings", what);
            return;
        }
        for (char *c = name; *c; c++)
            if (*c <= ' ' || *c > '~' || *c == ':') {
                jerr(j, "%s: bad header name \"%s\"", what, name);
                return;
            }
        (*count)++;
    } while (jeat(j, ','));
    if (!jeat(j, ']'))
        jerr(j, "%s: expected , or ]", what);
}

static void set_defaults(void) {
    static const char *required[] = {"From", "Date", "Message-ID"};
    static const char *singletons[] = {"From", "Sender", "Reply-To", "To", "Cc", "Bcc",
                                       "Subject", "Date", "Message-ID", "In-Reply-To",
                                       "References"};
    memset(&cfg, 0, sizeof cfg);
    cfg.action = ACTION_REJECT;
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        strcpy(cfg.required[cfg.n_required++], required[i]);
    for (size_t i = 0; i < sizeof singletons / sizeof *singletons; i++)
        strcpy(cfg.singletons[cfg.n_singletons++], singletons[i]);
    cfg.display_name_spoof = 1;
    strcpy(cfg.header, "X-Header-Check");
    cfg.skip_authenticated = 1;
}

// Parses the config; returns 0 and sets err on error.
static int parse_config(const char *text, size_t len, char *err, size_t errcap) {
    json_t j = {text, text + len, {0}};
    set_defaults();
    if (jpeek(&j) == -1) // an empty config is {}
        return 1;
    if (!jeat(&j, '{')) {
        snprintf(err, errcap, "config must be a table");
        return 0;
    }
    if (!jeat(&j, '}')) {
        do {
            char key[64];
            if (jstring(&j, key, sizeof key, "a key") < 0)
                break;
            if (!jeat(&j, ':')) {
                jerr(&j, "expected : after \"%s\"", key);
                break;
            }
            if (!strcmp(key, "action")) {
                char v[32];
                if (jstring(&j, v, sizeof v, "action") < 0)
                    break;
                if (!strcmp(v, "reject")) cfg.action = ACTION_REJECT;
                else if (!strcmp(v, "quarantine")) cfg.action = ACTION_QUARANTINE;
                else if (!strcmp(v, "flag")) cfg.action = ACTION_FLAG;
                else jerr(&j, "action must be \"reject\", \"quarantine\" or \"flag\", not \"%s\"", v);
            } else if (!strcmp(key, "required")) {
                jnames(&j, cfg.required, &cfg.n_required, "required");
            } else if (!strcmp(key, "singletons")) {
                jnames(&j, cfg.singletons, &cfg.n_singletons, "singletons");
            } else if (!strcmp(key, "display_name_spoof")) {
                cfg.display_name_spoof = jbool(&j, "display_name_spoof");
            } else if (!strcmp(key, "skip_authenticated")) {
                cfg.skip_authenticated = jbool(&j, "skip_authenticated");
            } else if (!strcmp(key, "header")) {
                char *h = cfg.header;
                if (jstring(&j, h, sizeof cfg.header, "header") <= 0)
                    jerr(&j, "header must be a non-empty header name");
                for (char *c = h; !j.err[0] && *c; c++)
                    if (*c <= ' ' || *c > '~' || *c == ':')
                        jerr(&j, "bad header name \"%s\"", h);
            } else {
                jerr(&j, "unknown key \"%s\"", key);
            }
        } while (!j.err[0] && jeat(&j, ','));
        if (!j.err[0] && !jeat(&j, '}'))
            jerr(&j, "expected , or } in the config table");
    }
    if (!j.err[0] && jpeek(&j) != -1)
        jerr(&j, "trailing text after the config table");
    if (j.err[0]) {
        snprintf(err, errcap, "%s", j.err);
        return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------
// Message checks.

// Appends "; text" (or "text" first) to the problem list, cut at the reply limit.
static void add_problem(char *out, size_t *len, const char *fmt, ...) {
    char item[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(item, sizeof item, fmt, ap);
    va_end(ap);
    size_t need = strlen(item) + (*len ? 2 : 0);
    if (*len + need > MAX_PROBLEMS_TEXT)
        return;
    if (*len) {
        memcpy(out + *len, "; ", 2);
        *len += 2;
    }
    memcpy(out + *len, item, strlen(item));
    *len += strlen(item);
    out[*len] = 0;
}

static int name_eq(const plugin_string_t *a, const char *b) {
    size_t n = strlen(b);
    if (a->len != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (tolower(a->ptr[i]) != tolower((unsigned char)b[i]))
            return 0;
    return 1;
}

static int is_domain_char(unsigned char c) {
    return isalnum(c) || c == '-' || c == '.' || c >= 0x80;
}

// The domain after the last '@' in s[0..n), lower-cased into out; 0 if none.
static int domain_of(const uint8_t *s, size_t n, char *out, size_t cap) {
    size_t at = n;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '@')
            at = i;
    if (at == n)
        return 0;
    size_t k = 0;
    for (size_t i = at + 1; i < n && is_domain_char(s[i]) && k + 1 < cap; i++)
        out[k++] = (char)tolower(s[i]);
    while (k && out[k - 1] == '.')
        k--;
    out[k] = 0;
    return k > 0 && strchr(out, '.') != NULL;
}

// Finds an address-looking word (x@domain.tld) in the display name s[0..n) whose domain is
// not the From address's domain (nor a subdomain of it); writes that domain to out.
static int display_spoof(const uint8_t *s, size_t n, const char *from_domain, char *out,
                         size_t cap) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '@' || i == 0 || !(isalnum(s[i - 1]) || strchr("._%+-", s[i - 1])))
            continue;
        size_t end = i + 1;
        while (end < n && is_domain_char(s[end]))
            end++;
        if (!domain_of(s + i, end - i, out, cap))
            continue;
        size_t dl = strlen(out), fl = strlen(from_domain);
        int same = !strcmp(out, from_domain) ||
                   (fl > dl && from_domain[fl - dl - 1] == '.' &&
                    !strcmp(from_domain + fl - dl, out));
        if (!same)
            return 1;
    }
    return 0;
}

static void check_from(const plugin_string_t *value, char *problems, size_t *len) {
    const uint8_t *v = value->ptr;
    size_t n = value->len;
    // The address is in the last <...>; without angle brackets there is no display name.
    size_t lt = n, gt = n;
    for (size_t i = n; i-- > 0;) {
        if (v[i] == '>' && gt == n) gt = i;
        if (v[i] == '<' && gt != n) { lt = i; break; }
    }
    if (lt == n)
        return;
    char from_domain[256], spoofed[256];
    if (!domain_of(v + lt + 1, gt - lt - 1, from_domain, sizeof from_domain))
        return;
    if (display_spoof(v, lt, from_domain, spoofed, sizeof spoofed))
        add_problem(problems, len, "From display name names %s", spoofed);
}

// ---------------------------------------------------------------------------------------------
// The exports.

static void log_info(const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    plugin_string_t line;
    plugin_string_set(&line, text);
    postrider_plugin_log_log(POSTRIDER_PLUGIN_LOG_LEVEL_INFO, &line);
}

static void reply(postrider_plugin_types_reply_t *r, uint16_t code, const char *enhanced,
                  const char *text) {
    r->code = code;
    r->enhanced.is_some = true;
    plugin_string_dup(&r->enhanced.val, enhanced);
    plugin_string_dup(&r->text, text);
}

bool exports_postrider_plugin_filter_init(plugin_string_t *config,
                                          exports_postrider_plugin_filter_stages_t *ret,
                                          plugin_string_t *err) {
    char msg[256];
    int ok = parse_config((const char *)config->ptr, config->len, msg, sizeof msg);
    plugin_string_free(config);
    if (!ok) {
        char full[300];
        snprintf(full, sizeof full, "c-header-check: %s", msg);
        plugin_string_dup(err, full);
        return false;
    }
    *ret = POSTRIDER_PLUGIN_TYPES_STAGES_DATA;
    return true;
}

void exports_postrider_plugin_filter_on_data(exports_postrider_plugin_filter_connection_t *conn,
                                             exports_postrider_plugin_filter_envelope_t *env,
                                             exports_postrider_plugin_filter_borrow_message_t msg,
                                             exports_postrider_plugin_filter_data_outcome_t *ret) {
    memset(ret, 0, sizeof *ret);
    ret->verdict.tag = POSTRIDER_PLUGIN_TYPES_VERDICT_CONTINUE;
    int skip = cfg.skip_authenticated && conn->auth_user.is_some;
    exports_postrider_plugin_filter_connection_free(conn);
    exports_postrider_plugin_filter_envelope_free(env);
    if (skip) {
        postrider_plugin_message_message_drop_borrow(msg);
        return;
    }

    plugin_list_tuple2_string_string_t headers;
    postrider_plugin_message_method_message_headers(msg, &headers);
    // A borrowed handle must be dropped before the call returns.
    postrider_plugin_message_message_drop_borrow(msg);

    char problems[MAX_PROBLEMS_TEXT + 1] = {0};
    size_t len = 0;
    for (int r = 0; r < cfg.n_required; r++) {
        int found = 0;
        for (size_t i = 0; i < headers.len && !found; i++)
            found = name_eq(&headers.ptr[i].f0, cfg.required[r]);
        if (!found)
            add_problem(problems, &len, "missing %s", cfg.required[r]);
    }
    for (int s = 0; s < cfg.n_singletons; s++) {
        int count = 0;
        for (size_t i = 0; i < headers.len; i++)
            count += name_eq(&headers.ptr[i].f0, cfg.singletons[s]);
        if (count > 1)
            add_problem(problems, &len, "%d %s headers", count, cfg.singletons[s]);
    }
    if (cfg.display_name_spoof)
        for (size_t i = 0; i < headers.len; i++)
            if (name_eq(&headers.ptr[i].f0, "From"))
                check_from(&headers.ptr[i].f1, problems, &len);
    plugin_list_tuple2_string_string_free(&headers);

    if (len > 0)
        log_info("header check: %s", problems);
    if (len > 0 && cfg.action == ACTION_REJECT) {
        char text[MAX_PROBLEMS_TEXT + 40];
        snprintf(text, sizeof text, "Bad message headers: %s", problems);
        ret->verdict.tag = POSTRIDER_PLUGIN_TYPES_VERDICT_REJECT;
        reply(&ret->verdict.val.reject, 550, "5.7.1", text);
    } else if (len > 0 && cfg.action == ACTION_QUARANTINE) {
        char reason[MAX_PROBLEMS_TEXT + 40];
        snprintf(reason, sizeof reason, "header check: %s", problems);
        ret->quarantine.is_some = true;
        plugin_string_dup(&ret->quarantine.val, reason);
    } else if (cfg.action == ACTION_FLAG) {
        // Remove any incoming header of ours; add one naming the problems, if any.
        size_t n = len > 0 ? 2 : 1;
        postrider_plugin_types_header_edit_t *edits = calloc(n, sizeof *edits);
        if (!edits)
            abort();
        edits[0].tag = POSTRIDER_PLUGIN_TYPES_HEADER_EDIT_REMOVE;
        plugin_string_dup(&edits[0].val.remove, cfg.header);
        if (len > 0) {
            edits[1].tag = POSTRIDER_PLUGIN_TYPES_HEADER_EDIT_PREPEND;
            plugin_string_dup(&edits[1].val.prepend.name, cfg.header);
            plugin_string_dup(&edits[1].val.prepend.value, problems);
        }
        ret->edits.ptr = edits;
        ret->edits.len = n;
    }
}

// Only the data stage is asked for (see init); the host never calls these, but the world
// exports them.

void exports_postrider_plugin_filter_on_connect(exports_postrider_plugin_filter_connection_t *conn,
                                                verdict_t *ret) {
    exports_postrider_plugin_filter_connection_free(conn);
    ret->tag = POSTRIDER_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_postrider_plugin_filter_on_helo(exports_postrider_plugin_filter_connection_t *conn,
                                             plugin_string_t *helo, verdict_t *ret) {
    exports_postrider_plugin_filter_connection_free(conn);
    plugin_string_free(helo);
    ret->tag = POSTRIDER_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_postrider_plugin_filter_on_mail_from(
    exports_postrider_plugin_filter_connection_t *conn,
    exports_postrider_plugin_filter_envelope_t *env, verdict_t *ret) {
    exports_postrider_plugin_filter_connection_free(conn);
    exports_postrider_plugin_filter_envelope_free(env);
    ret->tag = POSTRIDER_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_postrider_plugin_filter_on_rcpt(exports_postrider_plugin_filter_connection_t *conn,
                                             exports_postrider_plugin_filter_envelope_t *env,
                                             plugin_string_t *rcpt,
                                             exports_postrider_plugin_filter_rcpt_outcome_t *ret) {
    exports_postrider_plugin_filter_connection_free(conn);
    exports_postrider_plugin_filter_envelope_free(env);
    plugin_string_free(rcpt);
    memset(ret, 0, sizeof *ret);
    ret->verdict.tag = POSTRIDER_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_postrider_plugin_filter_on_route(exports_postrider_plugin_filter_connection_t *conn,
                                              exports_postrider_plugin_filter_envelope_t *env,
                                              plugin_string_t *rcpt,
                                              exports_postrider_plugin_filter_route_t *ret) {
    exports_postrider_plugin_filter_connection_free(conn);
    exports_postrider_plugin_filter_envelope_free(env);
    plugin_string_free(rcpt);
    ret->tag = POSTRIDER_PLUGIN_TYPES_ROUTE_MX;
}
