/* json.c - see json.h. */
#include "json.h"

#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EC_JSON_MAX_DEPTH 256
#define EC_ARENA_CHUNK (1u << 20)

typedef struct chunk { struct chunk *next; size_t used, cap; } chunk;
struct ec_json_doc { chunk *chunks; ec_json root; };

typedef struct {
    const char *s, *end, *p;
    ec_json_doc *doc;
    char *err; size_t errlen;
    int failed;
} parser;

static void *arena_alloc(parser *ps, size_t size) {
    chunk *c = ps->doc->chunks;
    size = (size + 15) & ~(size_t)15;
    if (!c || c->cap - c->used < size) {
        size_t cap = size > EC_ARENA_CHUNK ? size : EC_ARENA_CHUNK;
        chunk *nc = (chunk *)malloc(sizeof(chunk) + 16 + cap);
        if (!nc) return NULL;
        nc->next = c; nc->used = 0; nc->cap = cap;
        ps->doc->chunks = nc;
        c = nc;
    }
    {
        char *base = (char *)c + ((sizeof(chunk) + 15) & ~(size_t)15);
        void *r = base + c->used;
        c->used += size;
        return r;
    }
}

static void fail(parser *ps, const char *what) {
    if (ps->failed) return;
    ps->failed = 1;
    if (ps->err && ps->errlen) {
        size_t line = 1, col = 1;
        const char *q;
        for (q = ps->s; q < ps->p && q < ps->end; q++) {
            if (*q == '\n') { line++; col = 1; } else col++;
        }
        snprintf(ps->err, ps->errlen, "bad JSON at line %zu column %zu (byte %zu): %s", line, col,
                 (size_t)(ps->p - ps->s), what);
    }
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

size_t ec_put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* at the opening quote; returns the unescaped string in the arena */
static const char *parse_string(parser *ps, size_t *outlen) {
    const char *q = ps->p + 1, *start = q;
    char *buf, *o;
    /* find the end first to size the buffer (unescaped <= escaped length) */
    while (q < ps->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    buf = (char *)arena_alloc(ps, (size_t)(q - start) + 1);
    if (!buf) { fail(ps, "out of memory"); return NULL; }
    o = buf;
    q = start;
    while (*q != '"') {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20) { ps->p = q; fail(ps, "control character in string"); return NULL; }
        if (c != '\\') { *o++ = (char)c; q++; continue; }
        q++;
        switch (*q) {
        case '"': *o++ = '"'; q++; break;
        case '\\': *o++ = '\\'; q++; break;
        case '/': *o++ = '/'; q++; break;
        case 'b': *o++ = '\b'; q++; break;
        case 'f': *o++ = '\f'; q++; break;
        case 'n': *o++ = '\n'; q++; break;
        case 'r': *o++ = '\r'; q++; break;
        case 't': *o++ = '\t'; q++; break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - q < 5 || !hex4(q + 1, &cp)) { ps->p = q; fail(ps, "bad \\u escape"); return NULL; }
            q += 5;
            if (cp >= 0xD800 && cp <= 0xDBFF && ps->end - q >= 6 && q[0] == '\\' && q[1] == 'u' &&
                hex4(q + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                q += 6;
            } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* lone surrogate, as serde_json's lossy readers do */
            }
            o += ec_put_utf8(o, cp);
            break;
        }
        default: ps->p = q; fail(ps, "bad escape in string"); return NULL;
        }
    }
    *o = 0;
    *outlen = (size_t)(o - buf);
    ps->p = q + 1;
    return buf;
}

static int parse_value(parser *ps, ec_json *v, int depth);

static int is_digit(const char *p, const char *end) { return p < end && *p >= '0' && *p <= '9'; }

/* the length of the JSON number at p (-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?), 0 if there is none */
static size_t json_number_len(const char *p, const char *end) {
    const char *q = p;
    if (q < end && *q == '-') q++;
    if (!is_digit(q, end)) return 0;
    if (*q == '0') q++;
    else while (is_digit(q, end)) q++;
    if (q < end && *q == '.') {
        q++;
        if (!is_digit(q, end)) return 0;
        while (is_digit(q, end)) q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        if (!is_digit(q, end)) return 0;
        while (is_digit(q, end)) q++;
    }
    return (size_t)(q - p);
}

static int parse_container(parser *ps, ec_json *v, int depth, int is_obj) {
    size_t n = 0, cap = 0;
    ec_json *items = NULL;
    const char **keys = NULL;
    size_t *keylens = NULL;
    char close = is_obj ? '}' : ']';
    int ok = 0;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; ok = 1; goto done; }
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            ec_json *ni = (ec_json *)realloc(items, nc * sizeof(ec_json));
            if (!ni) { fail(ps, "out of memory"); goto done; }
            items = ni;
            if (is_obj) {
                const char **nk = (const char **)realloc((void *)keys, nc * sizeof(char *));
                size_t *nl;
                if (!nk) { fail(ps, "out of memory"); goto done; }
                keys = nk;
                nl = (size_t *)realloc(keylens, nc * sizeof(size_t));
                if (!nl) { fail(ps, "out of memory"); goto done; }
                keylens = nl;
            }
            cap = nc;
        }
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected a string key"); goto done; }
            keys[n] = parse_string(ps, &keylens[n]);
            if (!keys[n]) goto done;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { fail(ps, "expected ':'"); goto done; }
            ps->p++;
        }
        if (!parse_value(ps, &items[n], depth + 1)) goto done;
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; ok = 1; break; }
        fail(ps, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
        goto done;
    }
done:
    if (ok) {
        v->type = is_obj ? EC_JSON_OBJECT : EC_JSON_ARRAY;
        v->n = n;
        v->items = NULL; v->keys = NULL; v->keylens = NULL;
        if (n) {
            v->items = (ec_json *)arena_alloc(ps, n * sizeof(ec_json));
            if (!v->items) { fail(ps, "out of memory"); ok = 0; }
            else memcpy(v->items, items, n * sizeof(ec_json));
            if (ok && is_obj) {
                v->keys = (const char **)arena_alloc(ps, n * sizeof(char *));
                v->keylens = (size_t *)arena_alloc(ps, n * sizeof(size_t));
                if (!v->keys || !v->keylens) { fail(ps, "out of memory"); ok = 0; }
                else { memcpy((void *)v->keys, (const void *)keys, n * sizeof(char *)); memcpy(v->keylens, keylens, n * sizeof(size_t)); }
            }
        }
    }
    free(items); free((void *)keys); free(keylens);
    return ok;
}

static int parse_value(parser *ps, ec_json *v, int depth) {
    memset(v, 0, sizeof(*v));
    if (depth > EC_JSON_MAX_DEPTH) { fail(ps, "nesting too deep"); return 0; }
    skip_ws(ps);
    if (ps->p >= ps->end) { fail(ps, "unexpected end of input"); return 0; }
    switch (*ps->p) {
    case '{': return parse_container(ps, v, depth, 1);
    case '[': return parse_container(ps, v, depth, 0);
    case '"':
        v->type = EC_JSON_STRING;
        v->str = parse_string(ps, &v->n);
        return v->str != NULL;
    case 't':
        if (ps->end - ps->p >= 4 && !memcmp(ps->p, "true", 4)) { v->type = EC_JSON_TRUE; ps->p += 4; return 1; }
        break;
    case 'f':
        if (ps->end - ps->p >= 5 && !memcmp(ps->p, "false", 5)) { v->type = EC_JSON_FALSE; ps->p += 5; return 1; }
        break;
    case 'n':
        if (ps->end - ps->p >= 4 && !memcmp(ps->p, "null", 4)) { v->type = EC_JSON_NULL; ps->p += 4; return 1; }
        break;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
            char tmp[64];
            size_t k = json_number_len(ps->p, ps->end);
            char *e;
            if (!k) { fail(ps, "bad number"); return 0; }
            if (k >= sizeof tmp) { fail(ps, "number too long"); return 0; }
            memcpy(tmp, ps->p, k);
            tmp[k] = 0;
            {
                /* strtod reads the C locale's decimal point only when the program has not set another one */
                const char *dp = localeconv()->decimal_point;
                char *dot = strchr(tmp, '.');
                if (dot && dp && dp[0] && dp[0] != '.' && !dp[1]) *dot = dp[0];
            }
            v->num = strtod(tmp, &e);
            if (e != tmp + k) { fail(ps, "bad number"); return 0; }
            v->type = EC_JSON_NUMBER;
            ps->p += k;
            return 1;
        }
    }
    fail(ps, "unexpected character");
    return 0;
}

const ec_json *ec_json_parse(const char *json, size_t len, ec_json_doc **doc, char *err, size_t errlen) {
    parser ps;
    ec_json_doc *d = (ec_json_doc *)calloc(1, sizeof(ec_json_doc));
    *doc = NULL;
    if (!d) { if (err && errlen) snprintf(err, errlen, "out of memory"); return NULL; }
    memset(&ps, 0, sizeof ps);
    ps.s = ps.p = json; ps.end = json + len; ps.doc = d; ps.err = err; ps.errlen = errlen;
    if (len >= 3 && !memcmp(json, "\xEF\xBB\xBF", 3)) ps.p += 3; /* BOM */
    if (parse_value(&ps, &d->root, 0)) {
        skip_ws(&ps);
        if (ps.p != ps.end) fail(&ps, "trailing characters after the document");
    }
    if (ps.failed) { ec_json_free(d); return NULL; }
    *doc = d;
    return &d->root;
}

void ec_json_free(ec_json_doc *doc) {
    chunk *c;
    if (!doc) return;
    c = doc->chunks;
    while (c) { chunk *n = c->next; free(c); c = n; }
    free(doc);
}

const ec_json *ec_json_get(const ec_json *obj, const char *key) {
    size_t i, kl;
    if (!obj || obj->type != EC_JSON_OBJECT) return NULL;
    kl = strlen(key);
    for (i = 0; i < obj->n; i++)
        if (obj->keylens[i] == kl && !memcmp(obj->keys[i], key, kl)) return &obj->items[i];
    return NULL;
}

const char *ec_json_str(const ec_json *v) { return v && v->type == EC_JSON_STRING ? v->str : NULL; }

int ec_json_bool(const ec_json *v, int dflt) {
    if (!v) return dflt;
    if (v->type == EC_JSON_TRUE) return 1;
    if (v->type == EC_JSON_FALSE) return 0;
    return dflt;
}
