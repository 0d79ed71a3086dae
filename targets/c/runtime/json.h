/* json.h - a tiny dependency-free JSON reader (C99) for edgec's C runtime.
 * Parses a whole document into a read-only tree held in one arena. */
#ifndef EC_JSON_H
#define EC_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { EC_JSON_NULL, EC_JSON_FALSE, EC_JSON_TRUE, EC_JSON_NUMBER, EC_JSON_STRING,
               EC_JSON_ARRAY, EC_JSON_OBJECT } ec_json_type;

typedef struct ec_json ec_json;
struct ec_json {
    ec_json_type type;
    size_t n;            /* string: byte length; array/object: number of items */
    double num;          /* number value */
    const char *str;     /* string value, NUL-terminated (may contain NULs from \u0000) */
    ec_json *items;      /* array/object items */
    const char **keys;   /* object keys, NUL-terminated */
    size_t *keylens;     /* object key byte lengths */
};

typedef struct ec_json_doc ec_json_doc;

/* Parses json[0..len). Returns the root (owned by *doc; free with ec_json_free) or NULL with a
 * one-line message in err. */
const ec_json *ec_json_parse(const char *json, size_t len, ec_json_doc **doc, char *err, size_t errlen);
void ec_json_free(ec_json_doc *doc);

/* Object member by key (first match) or NULL; NULL-safe. */
const ec_json *ec_json_get(const ec_json *obj, const char *key);
/* The string of a string node or NULL; NULL-safe. */
const char *ec_json_str(const ec_json *v);
/* Boolean value: 1 for true, 0 for false, dflt for anything else (including NULL). */
int ec_json_bool(const ec_json *v, int dflt);

/* code point cp as UTF-8 at o (1-4 bytes, no terminator); returns the byte count (the JSON reader's and the tokenizer's) */
size_t ec_put_utf8(char *o, uint32_t cp);

#endif
