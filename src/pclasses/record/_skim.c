/* pclasses.record._skim: a C-speed pre-scan of a ZODB record's opcode stream.
 *
 * A ZODB data record is two pickles back to back (class metadata, then
 * state).  skim(data) walks the opcodes of both, without building anything,
 * and returns (end1, max_memo_index, has_ext):
 *
 *   end1            offset just after the first pickle's STOP;
 *   max_memo_index  largest memo index stored by PUT / BINPUT / LONG_BINPUT
 *                   in either pickle, MEMOIZE counting as "number of memo
 *                   stores so far" (one counter for both pickles, as one
 *                   Unpickler loads both); -1 when nothing is memoized;
 *   has_ext         whether any EXT1 / EXT2 / EXT4 occurs.
 *
 * ValueError (with the byte offset) for an unknown opcode, an argument that
 * runs past the end of the data, a missing STOP, or a PUT argument that is
 * not plain ASCII digits.  Bytes after the second STOP are not looked at.
 *
 * No allocation per opcode, no recursion, no calls back into Python; the
 * GIL is released for large inputs.  pclasses/skim.py holds the pure-Python
 * twin with the same semantics; keep the two in step.
 *
 * analyze(data) (further down) runs an abstract pickle machine over both
 * pickles and reports where globals and persistent references sit in the
 * bytes; its twin is pclasses.record.analyze.analyze_py, whose module docstring is
 * the specification.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Inputs at least this long are scanned with the GIL released. */
#define SKIM_NOGIL_THRESHOLD (64 * 1024)

enum {
    SKIM_OK = 0,
    SKIM_UNKNOWN_OPCODE,
    SKIM_TRUNCATED,
    SKIM_NO_STOP,
    SKIM_BAD_PUT
};

typedef struct {
    int status;
    int which;            /* 1 or 2: the pickle being walked */
    unsigned char opcode; /* the opcode at fault */
    Py_ssize_t offset;    /* where the fault is */
    uint64_t need;        /* SKIM_TRUNCATED: bytes still needed (0: a
                             newline-terminated argument has no newline) */
    uint64_t have;        /* SKIM_TRUNCATED: bytes left at that point */
    Py_ssize_t end1;
    int64_t max_memo;
    int has_ext;
} skim_result;

static inline uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t
le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* Walk one pickle starting at *pos; on success *pos is just after STOP. */
static int
skim_one(const unsigned char *base, Py_ssize_t len, Py_ssize_t *pos,
         int64_t *max_memo, int64_t *stores, int *has_ext, skim_result *r)
{
    const unsigned char *p = base + *pos;
    const unsigned char *end = base + len;

#define FAIL_TRUNC(op_at, needed)                                      \
    do {                                                               \
        r->status = SKIM_TRUNCATED;                                    \
        r->opcode = *(op_at);                                          \
        r->offset = (op_at) - base;                                    \
        r->need = (uint64_t)(needed);                                  \
        r->have = (uint64_t)(end - p);                                 \
        return -1;                                                     \
    } while (0)
    /* Need n fixed bytes after the opcode at op. */
#define NEED(n)                                                        \
    do {                                                               \
        if ((size_t)(end - p) < (size_t)(n))                           \
            FAIL_TRUNC(op, (n));                                       \
    } while (0)
    /* Skip one newline-terminated line (including the newline). */
#define SKIP_LINE()                                                    \
    do {                                                               \
        const unsigned char *nl_ =                                     \
            memchr(p, '\n', (size_t)(end - p));                        \
        if (nl_ == NULL) {                                             \
            r->status = SKIM_TRUNCATED;                                \
            r->opcode = *op;                                           \
            r->offset = op - base;                                     \
            r->need = 0; /* 0: no newline */                           \
            r->have = (uint64_t)(end - p);                             \
            return -1;                                                 \
        }                                                              \
        p = nl_ + 1;                                                   \
    } while (0)
#define STORE(idx)                                                     \
    do {                                                               \
        int64_t i_ = (int64_t)(idx);                                   \
        if (i_ > *max_memo)                                            \
            *max_memo = i_;                                            \
        (*stores)++;                                                   \
    } while (0)

    while (p < end) {
        const unsigned char *op = p++;
        uint64_t n;

        switch (*op) {
        /* STOP */
        case '.':
            *pos = p - base;
            return 0;

        /* Opcodes without an argument. */
        case '(': /* MARK */
        case '0': /* POP */
        case '1': /* POP_MARK */
        case '2': /* DUP */
        case 'N': /* NONE */
        case 'Q': /* BINPERSID */
        case 'R': /* REDUCE */
        case 'a': /* APPEND */
        case 'b': /* BUILD */
        case 'd': /* DICT */
        case 'e': /* APPENDS */
        case 'l': /* LIST */
        case 'o': /* OBJ */
        case 's': /* SETITEM */
        case 't': /* TUPLE */
        case 'u': /* SETITEMS */
        case ')': /* EMPTY_TUPLE */
        case ']': /* EMPTY_LIST */
        case '}': /* EMPTY_DICT */
        case 0x81: /* NEWOBJ */
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
        case 0x8f: /* EMPTY_SET */
        case 0x90: /* ADDITEMS */
        case 0x91: /* FROZENSET */
        case 0x92: /* NEWOBJ_EX */
        case 0x93: /* STACK_GLOBAL */
        case 0x97: /* NEXT_BUFFER */
        case 0x98: /* READONLY_BUFFER */
            break;

        case 0x94: /* MEMOIZE: index = memo stores so far */
            STORE(*stores);
            break;

        /* One newline-terminated argument. */
        case 'I': /* INT */
        case 'L': /* LONG */
        case 'F': /* FLOAT */
        case 'S': /* STRING */
        case 'V': /* UNICODE */
        case 'P': /* PERSID */
        case 'g': /* GET */
            SKIP_LINE();
            break;

        /* Two newline-terminated arguments. */
        case 'c': /* GLOBAL */
        case 'i': /* INST */
            SKIP_LINE();
            SKIP_LINE();
            break;

        case 'p': { /* PUT: decimal digits, newline */
            const unsigned char *start = p;
            uint64_t v = 0;
            int big = 0;
            SKIP_LINE();
            /* [start, p - 1) are the argument's bytes. */
            if (p - 1 == start) {
                r->status = SKIM_BAD_PUT;
                r->opcode = *op;
                r->offset = op - base;
                return -1;
            }
            for (const unsigned char *q = start; q < p - 1; q++) {
                unsigned d = (unsigned)(*q - '0');
                if (d > 9) {
                    r->status = SKIM_BAD_PUT;
                    r->opcode = *op;
                    r->offset = op - base;
                    return -1;
                }
                if (!big) {
                    if (v > (UINT64_C(0x7fffffffffffffff) - d) / 10)
                        big = 1;
                    else
                        v = v * 10 + d;
                }
            }
            STORE(big ? INT64_MAX : (int64_t)v);
            break;
        }

        /* Fixed-size arguments. */
        case 0x80: /* PROTO */
        case 'K':  /* BININT1 */
        case 'h':  /* BINGET */
            NEED(1);
            p += 1;
            break;
        case 'M': /* BININT2 */
            NEED(2);
            p += 2;
            break;
        case 'J': /* BININT */
        case 'j': /* LONG_BINGET */
            NEED(4);
            p += 4;
            break;
        case 'G': /* BINFLOAT */
            NEED(8);
            p += 8;
            break;
        case 0x95: /* FRAME: 8-byte length; the contents are opcodes */
            NEED(8);
            n = le64(p);
            p += 8;
            if (n > (uint64_t)(end - p))
                FAIL_TRUNC(op, n);
            break;

        case 'q': /* BINPUT */
            NEED(1);
            STORE(p[0]);
            p += 1;
            break;
        case 'r': /* LONG_BINPUT */
            NEED(4);
            STORE(le32(p));
            p += 4;
            break;

        case 0x82: /* EXT1 */
            NEED(1);
            *has_ext = 1;
            p += 1;
            break;
        case 0x83: /* EXT2 */
            NEED(2);
            *has_ext = 1;
            p += 2;
            break;
        case 0x84: /* EXT4 */
            NEED(4);
            *has_ext = 1;
            p += 4;
            break;

        /* Counted arguments: 1-byte length. */
        case 'U':  /* SHORT_BINSTRING */
        case 'C':  /* SHORT_BINBYTES */
        case 0x8c: /* SHORT_BINUNICODE */
        case 0x8a: /* LONG1 */
            NEED(1);
            n = p[0];
            p += 1;
            if (n > (uint64_t)(end - p))
                FAIL_TRUNC(op, n);
            p += n;
            break;

        /* Counted arguments: 4-byte length (read unsigned). */
        case 'T':  /* BINSTRING */
        case 'B':  /* BINBYTES */
        case 'X':  /* BINUNICODE */
        case 0x8b: /* LONG4 */
            NEED(4);
            n = le32(p);
            p += 4;
            if (n > (uint64_t)(end - p))
                FAIL_TRUNC(op, n);
            p += n;
            break;

        /* Counted arguments: 8-byte length. */
        case 0x8d: /* BINUNICODE8 */
        case 0x8e: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8 */
            NEED(8);
            n = le64(p);
            p += 8;
            if (n > (uint64_t)(end - p))
                FAIL_TRUNC(op, n);
            p += n;
            break;

        default:
            r->status = SKIM_UNKNOWN_OPCODE;
            r->opcode = *op;
            r->offset = op - base;
            return -1;
        }
    }
    r->status = SKIM_NO_STOP;
    r->offset = len;
    return -1;

#undef FAIL_TRUNC
#undef NEED
#undef SKIP_LINE
#undef STORE
}

static void
skim_buffer(const unsigned char *base, Py_ssize_t len, skim_result *r)
{
    Py_ssize_t pos = 0;
    int64_t max_memo = -1, stores = 0;
    int has_ext = 0;

    r->status = SKIM_OK;
    r->which = 1;
    if (skim_one(base, len, &pos, &max_memo, &stores, &has_ext, r) < 0)
        return;
    r->end1 = pos;
    r->which = 2;
    if (skim_one(base, len, &pos, &max_memo, &stores, &has_ext, r) < 0)
        return;
    r->max_memo = max_memo;
    r->has_ext = has_ext;
}

static PyObject *
skim_error(const skim_result *r)
{
    const char *which = r->which == 1 ? "first" : "second";
    switch (r->status) {
    case SKIM_UNKNOWN_OPCODE:
        PyErr_Format(PyExc_ValueError,
                     "unknown opcode 0x%02x at offset %zd (%s pickle)",
                     (unsigned)r->opcode, r->offset, which);
        break;
    case SKIM_TRUNCATED:
        if (r->need == 0)
            PyErr_Format(PyExc_ValueError,
                         "truncated argument of opcode 0x%02x at offset %zd "
                         "(%s pickle): no newline in the %llu bytes left",
                         (unsigned)r->opcode, r->offset, which,
                         (unsigned long long)r->have);
        else
            PyErr_Format(PyExc_ValueError,
                         "truncated argument of opcode 0x%02x at offset %zd "
                         "(%s pickle): needs %llu bytes, %llu left",
                         (unsigned)r->opcode, r->offset, which,
                         (unsigned long long)r->need,
                         (unsigned long long)r->have);
        break;
    case SKIM_NO_STOP:
        PyErr_Format(PyExc_ValueError,
                     "missing STOP: %s pickle runs to the end of data "
                     "at offset %zd",
                     which, r->offset);
        break;
    case SKIM_BAD_PUT:
        PyErr_Format(PyExc_ValueError,
                     "malformed PUT argument at offset %zd (%s pickle): "
                     "not decimal digits",
                     r->offset, which);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "skim: unexpected status");
    }
    return NULL;
}

static PyObject *
skim_result_tuple(const skim_result *r)
{
    PyObject *end1, *memo, *t;
    end1 = PyLong_FromSsize_t(r->end1);
    if (end1 == NULL)
        return NULL;
    memo = PyLong_FromLongLong((long long)r->max_memo);
    if (memo == NULL) {
        Py_DECREF(end1);
        return NULL;
    }
    t = PyTuple_New(3);
    if (t == NULL) {
        Py_DECREF(end1);
        Py_DECREF(memo);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, end1);
    PyTuple_SET_ITEM(t, 1, memo);
    PyTuple_SET_ITEM(t, 2, Py_NewRef(r->has_ext ? Py_True : Py_False));
    return t;
}

/* ------------------------------------------------------------------------
 * analyze(data): an abstract pickle machine over both pickles.
 *
 * The same walk as skim (same structural errors, same messages), plus the
 * stack effect of every opcode on a stack of *items*: literals (with their
 * payload's offset and length), GLOBALs, tuples and lists (with their first
 * three children), and one anonymous item (index 0) standing for every value
 * whose identity does not matter.  Nothing is called; one memo serves both
 * pickles.  It reports where globals and persistent references sit in the
 * bytes.  pclasses/skim.py (analyze_py) is the twin with the same semantics
 * and messages; keep the two in step.
 *
 * Memory: a few arrays (items, stack, marks, memo, globals, pids) that start
 * in a buffer on the C stack and grow by doubling on the raw heap.  Each
 * opcode adds at most one item, one stack slot, one mark, one global or one
 * pid, so all of them are bounded by the record length; the memo is bounded
 * by len(data) + 1 entries (a larger index is refused before it is stored).
 * ------------------------------------------------------------------------ */

enum {
    AK_ANON = 0, /* constants, dicts, sets, results of calls, ... */
    AK_BYTES,    /* SHORT_BINBYTES, BINBYTES, BINBYTES8 */
    AK_STR,      /* SHORT_BINSTRING, BINSTRING */
    AK_UNI,      /* SHORT_BINUNICODE, BINUNICODE, BINUNICODE8 */
    AK_TSTR,     /* STRING with quotes and no backslash */
    AK_TUNI,     /* UNICODE with no backslash */
    AK_GLOBAL,
    AK_TUPLE,
    AK_LIST,
    AK_PREF,     /* result of PERSID / BINPERSID; x[0]: the pid's index */
    AK_NUM,      /* a number or None / True / False (fp: its hash model) */
    AK_DICT,     /* EMPTY_DICT, DICT */
    AK_SET,      /* EMPTY_SET */
    AK_FSET,     /* FROZENSET */
    AK_CALL      /* result of REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST */
};
#define AK_IS_LIT(k) ((k) >= AK_BYTES && (k) <= AK_TUNI)

#define AF_ATTR 1   /* path children's placements re-attributed already */
#define AF_NONPID 2 /* used in a role with a bit (1, 2, 4, 8, 16) */
#define AF_TAINT 4  /* a list changed by something other than APPEND(S) */
#define AF_DIRTY 8  /* an oid literal whose patching changes non-pid data */

#define USE_REDUCE 1
#define USE_NEWOBJ 2
#define USE_INSTANTIATE 4
#define USE_CLASS_META 8
#define USE_PID_CLASS 16
#define USE_OTHER 32
#define USE_BUILD_TARGET 64
#define USE_ITEMS_TARGET 128
#define USE_PIDPATH 256 /* internal: the pid and the path to its oid */
#define USE_CACHE 256   /* Use members cached for bit sets below this */
#define PAIR_CACHE 64   /* slots of the (module, name) cache (a power of 2) */
#define PAIR_CACHE_MAX 200 /* longest module + name kept there */

enum { DEC_UTF8 = 0, DEC_LATIN1 = 1 };

enum {
    PK_OID = 0, PK_OID_CLASS, PK_WEAK, PK_MULTI_OID, PK_MULTI, PK_LEGACY,
    PK_UNKNOWN, PK_COUNT
};
static const char *const pk_names[PK_COUNT] = {
    "oid", "oid_class", "weak", "multi_oid", "multi", "legacy", "unknown"
};

typedef struct {
    uint8_t kind, flags, bits, n; /* n: children, saturating at 4 */
    uint8_t hasfp;                /* fp is set (else: hash not modelled) */
    int64_t depth;                /* containers / calls nested inside */
    Py_ssize_t count;             /* items a container received */
    uint64_t fp;                  /* hash model of the value as a key */
    Py_ssize_t pending;           /* USE_OTHER uses not re-attributed */
    /* literal: offset, length; GLOBAL: entry; container: first 3 children */
    Py_ssize_t x[3];
} an_item;

typedef struct {
    Py_ssize_t off, end, item; /* item -1: INST (no item) */
    Py_ssize_t moff, mlen, noff, nlen; /* moff/noff -1: not a literal */
    uint8_t op, mmode, nmode;
} an_global;

typedef struct {
    uint8_t kind, which, persid;
    Py_ssize_t p, a, l, d, klass; /* items, -1 for none */
    Py_ssize_t oid_off, oid_len;
} an_pid;

enum {
    AN_OK = SKIM_OK,
    AN_UNKNOWN_OPCODE = SKIM_UNKNOWN_OPCODE,
    AN_TRUNCATED = SKIM_TRUNCATED,
    AN_NO_STOP = SKIM_NO_STOP,
    AN_BAD_PUT = SKIM_BAD_PUT,
    AN_BAD_GET = 100,
    AN_UNDERFLOW,
    AN_NO_MARK,
    AN_ODD,
    AN_MEMO_UNSET,
    AN_MEMO_TOO_BIG,
    AN_NOMEM,
    AN_DEEP,
    AN_MANY_ITEMS,
    AN_COLLISIONS,
    AN_MEMO_LIMIT
};

#define AN_INLINE_ITEMS 64
#define AN_INLINE_STACK 64
#define AN_INLINE_MARKS 16
#define AN_INLINE_MEMO 64
#define AN_INLINE_GLOBALS 8
#define AN_INLINE_PIDS 16

typedef struct {
    /* error report (status, which, opcode, offset, need, have as skim) */
    skim_result r;
    int64_t index; /* AN_MEMO_UNSET / AN_MEMO_TOO_BIG: the memo index */
    int has_sg, has_frame, protocol;

    an_item *items;
    Py_ssize_t nitems, citems;
    Py_ssize_t *stack;
    Py_ssize_t sp, cstack;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, cmarks;
    Py_ssize_t *memo;
    Py_ssize_t cmemo, memo_len;
    an_global *globals;
    Py_ssize_t nglobals, cglobals;
    an_pid *pids;
    Py_ssize_t npids, cpids;

    an_item items_buf[AN_INLINE_ITEMS];
    Py_ssize_t stack_buf[AN_INLINE_STACK];
    Py_ssize_t marks_buf[AN_INLINE_MARKS];
    Py_ssize_t memo_buf[AN_INLINE_MEMO];
    an_global globals_buf[AN_INLINE_GLOBALS];
    an_pid pids_buf[AN_INLINE_PIDS];

    Py_ssize_t class_pid; /* pid that is the record's class, -1 */
    /* offsets of calls whose callable is not a GLOBAL / is a pid */
    Py_ssize_t *calls_ng, *calls_pid;
    Py_ssize_t ncalls_ng, ccalls_ng, ncalls_pid, ccalls_pid;
    Py_ssize_t calls_ng_buf[4], calls_pid_buf[4];

    /* limits (pclasses.record.limits.Limits) */
    int64_t max_depth, max_items, max_memo, max_coll;
    int64_t limit; /* the limit an AN_DEEP/... error names */
    /* every (container, key hash model, opcode offset) inserted; checked
       after the walk (sorted), see an_check_collisions */
    struct an_coll { Py_ssize_t c; uint64_t fp; Py_ssize_t at; } *coll;
    Py_ssize_t ncoll, ccoll;
    struct an_coll coll_buf[16];
    Py_ssize_t consts[3]; /* shared items of None, True, False (0: none yet) */
} an_state;

static void
an_init(an_state *st)
{
    memset(&st->r, 0, sizeof(st->r));
    st->index = 0;
    st->has_sg = st->has_frame = 0;
    st->protocol = -1;
    st->items = st->items_buf;
    st->citems = AN_INLINE_ITEMS;
    st->items[0].kind = AK_ANON;
    st->items[0].flags = st->items[0].bits = st->items[0].n = 0;
    st->items[0].pending = 0;
    st->items[0].hasfp = 0;
    st->items[0].depth = 0;
    st->items[0].count = 0;
    st->items[0].fp = 0;
    st->nitems = 1;
    st->consts[0] = st->consts[1] = st->consts[2] = 0;
    st->coll = st->coll_buf;
    st->ncoll = 0;
    st->ccoll = 16;
    st->limit = 0;
    st->stack = st->stack_buf;
    st->cstack = AN_INLINE_STACK;
    st->sp = 0;
    st->marks = st->marks_buf;
    st->cmarks = AN_INLINE_MARKS;
    st->nmarks = 0;
    st->memo = st->memo_buf;
    st->cmemo = AN_INLINE_MEMO;
    st->memo_len = 0;
    for (Py_ssize_t i = 0; i < AN_INLINE_MEMO; i++)
        st->memo_buf[i] = -1;
    st->globals = st->globals_buf;
    st->cglobals = AN_INLINE_GLOBALS;
    st->nglobals = 0;
    st->pids = st->pids_buf;
    st->cpids = AN_INLINE_PIDS;
    st->npids = 0;
    st->class_pid = -1;
    st->calls_ng = st->calls_ng_buf;
    st->calls_pid = st->calls_pid_buf;
    st->ncalls_ng = st->ncalls_pid = 0;
    st->ccalls_ng = st->ccalls_pid = 4;
}

static void
an_free(an_state *st)
{
    if (st->items != st->items_buf)
        PyMem_RawFree(st->items);
    if (st->stack != st->stack_buf)
        PyMem_RawFree(st->stack);
    if (st->marks != st->marks_buf)
        PyMem_RawFree(st->marks);
    if (st->memo != st->memo_buf)
        PyMem_RawFree(st->memo);
    if (st->globals != st->globals_buf)
        PyMem_RawFree(st->globals);
    if (st->pids != st->pids_buf)
        PyMem_RawFree(st->pids);
    if (st->calls_ng != st->calls_ng_buf)
        PyMem_RawFree(st->calls_ng);
    if (st->calls_pid != st->calls_pid_buf)
        PyMem_RawFree(st->calls_pid);
    if (st->coll != st->coll_buf)
        PyMem_RawFree(st->coll);
}

/* Grow *arr (capacity *cap, elements of elsize bytes, initially the inline
 * buffer inline_buf) to hold at least need elements.  No GIL needed. */
static int
an_grow(void **arr, Py_ssize_t *cap, size_t elsize, void *inline_buf,
        Py_ssize_t need)
{
    Py_ssize_t ncap = *cap > PY_SSIZE_T_MAX / 2 ? PY_SSIZE_T_MAX : *cap * 2;
    void *p;
    if (ncap < need)
        ncap = need;
    if ((size_t)ncap > (size_t)PY_SSIZE_T_MAX / elsize)
        return -1;
    if (*arr == inline_buf) {
        p = PyMem_RawMalloc((size_t)ncap * elsize);
        if (p != NULL)
            memcpy(p, *arr, (size_t)*cap * elsize);
    }
    else {
        p = PyMem_RawRealloc(*arr, (size_t)ncap * elsize);
    }
    if (p == NULL)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

static inline Py_ssize_t
an_new(an_state *st, int kind, Py_ssize_t x0, Py_ssize_t x1)
{
    an_item *it;
    if (st->nitems == st->citems &&
        an_grow((void **)&st->items, &st->citems, sizeof(an_item),
                st->items_buf, st->nitems + 1) < 0)
        return -1;
    it = &st->items[st->nitems];
    it->kind = (uint8_t)kind;
    it->flags = it->bits = it->n = 0;
    it->hasfp = 0;
    it->depth = 0;
    it->count = 0;
    it->fp = 0;
    it->pending = 0;
    it->x[0] = x0;
    it->x[1] = x1;
    it->x[2] = 0;
    return st->nitems++;
}

static inline void
an_use(an_state *st, Py_ssize_t i, int role)
{
    an_item *it;
    if (i == 0)
        return;
    it = &st->items[i];
    if (role == USE_OTHER)
        it->pending++;
    else if (role != USE_PIDPATH) {
        it->bits |= (uint8_t)role;
        it->flags |= AF_NONPID;
    }
}

/* A placement into a container (counted as USE_OTHER) has another role. */
static inline void
an_reattr(an_state *st, Py_ssize_t i, int role)
{
    an_item *it;
    if (i == 0)
        return;
    it = &st->items[i];
    it->pending--;
    if (role != USE_PIDPATH) {
        it->bits |= (uint8_t)role;
        it->flags |= AF_NONPID;
    }
}

static inline void
an_add_child(an_state *st, Py_ssize_t c, Py_ssize_t i)
{
    an_item *it;
    an_use(st, i, USE_OTHER);
    it = &st->items[c];
    if (it->n < 3)
        it->x[it->n] = i;
    if (it->n < 4)
        it->n++;
}

static int
an_is_ascii(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return 0;
    return 1;
}

static int
an_oid_ok(const an_state *st, const unsigned char *base, Py_ssize_t i)
{
    const an_item *it = &st->items[i];
    if (it->kind == AK_UNI)
        return an_is_ascii(base + it->x[0], it->x[1]);
    return AK_IS_LIT(it->kind);
}

/* BINPERSID popped item p: recognise the reference shape and record it. */
static int
an_classify(an_state *st, const unsigned char *base, Py_ssize_t p, int which)
{
    Py_ssize_t a = -1, l = -1, d = -1, klass = -1;
    int pk = PK_UNKNOWN;
    an_item *it = &st->items[p];
    an_pid *rec;

    if (AK_IS_LIT(it->kind)) {
        l = p;
        pk = PK_OID;
    }
    else if (it->kind == AK_TUPLE) {
        if (it->n == 2) {
            l = it->x[0];
            klass = it->x[1];
            pk = PK_OID_CLASS;
        }
    }
    else if (it->kind == AK_LIST && !(it->flags & AF_TAINT)) {
        if (it->n == 1) {
            l = it->x[0];
            pk = PK_LEGACY;
        }
        else if (it->n == 2) {
            const an_item *tag = &st->items[it->x[0]];
            const an_item *t = &st->items[it->x[1]];
            if (AK_IS_LIT(tag->kind) && tag->x[1] == 1 && t->kind == AK_TUPLE) {
                unsigned char ch = base[tag->x[0]];
                if (ch == 'w' && t->n == 1) {
                    a = it->x[1];
                    l = t->x[0];
                    pk = PK_WEAK;
                }
                else if (ch == 'w' && t->n == 2) {
                    a = it->x[1];
                    l = t->x[0];
                    d = t->x[1];
                    pk = PK_WEAK;
                }
                else if (ch == 'n' && t->n == 2) {
                    a = it->x[1];
                    d = t->x[0];
                    l = t->x[1];
                    pk = PK_MULTI_OID;
                }
                else if (ch == 'm' && t->n == 3) {
                    a = it->x[1];
                    d = t->x[0];
                    l = t->x[1];
                    klass = t->x[2];
                    pk = PK_MULTI;
                }
            }
        }
    }
    if (pk != PK_UNKNOWN &&
        (!an_oid_ok(st, base, l) ||
         (d >= 0 && !AK_IS_LIT(st->items[d].kind))))
        pk = PK_UNKNOWN;

    if (st->npids == st->cpids &&
        an_grow((void **)&st->pids, &st->cpids, sizeof(an_pid), st->pids_buf,
                st->npids + 1) < 0)
        return -1;
    rec = &st->pids[st->npids++];
    rec->which = (uint8_t)which;
    rec->persid = 0;
    if (pk == PK_UNKNOWN) {
        an_use(st, p, USE_OTHER);
        rec->kind = PK_UNKNOWN;
        rec->p = p;
        rec->a = rec->l = rec->d = rec->klass = -1;
        rec->oid_off = -1;
        rec->oid_len = 0;
        return 0;
    }
    /* The pid itself is used in the pid role (nothing to count); the
       placements on the path from it to the oid are re-attributed once per
       container, as is a GLOBAL class part's placement. */
    if (p != l && !(st->items[p].flags & AF_ATTR)) {
        st->items[p].flags |= AF_ATTR;
        an_reattr(st, a >= 0 ? a : l, USE_PIDPATH);
        if (pk == PK_OID_CLASS && st->items[klass].kind == AK_GLOBAL)
            an_reattr(st, klass, USE_PID_CLASS);
    }
    if (a >= 0 && !(st->items[a].flags & AF_ATTR)) {
        st->items[a].flags |= AF_ATTR;
        an_reattr(st, l, USE_PIDPATH);
        if (pk == PK_MULTI && st->items[klass].kind == AK_GLOBAL)
            an_reattr(st, klass, USE_PID_CLASS);
    }
    rec->kind = (uint8_t)pk;
    rec->p = p;
    rec->a = a;
    rec->l = l;
    rec->d = d;
    rec->klass = klass;
    rec->oid_off = st->items[l].x[0];
    rec->oid_len = st->items[l].x[1];
    return 0;
}

static int
an_add_global(an_state *st, unsigned char op, Py_ssize_t off, Py_ssize_t end,
              Py_ssize_t item, Py_ssize_t moff, Py_ssize_t mlen, int mmode,
              Py_ssize_t noff, Py_ssize_t nlen, int nmode)
{
    an_global *g;
    if (st->nglobals == st->cglobals &&
        an_grow((void **)&st->globals, &st->cglobals, sizeof(an_global),
                st->globals_buf, st->nglobals + 1) < 0)
        return -1;
    g = &st->globals[st->nglobals++];
    g->op = op;
    g->off = off;
    g->end = end;
    g->item = item;
    g->moff = moff;
    g->mlen = mlen;
    g->mmode = (uint8_t)mmode;
    g->noff = noff;
    g->nlen = nlen;
    g->nmode = (uint8_t)nmode;
    return 0;
}

/* ---- Limits and the hash model (see pclasses/record/limits.py and the
 * "hash floods" decision in design/decisions.md; analyze.py has the twin). */

#define HASH_P ((uint64_t)0x1FFFFFFFFFFFFFFFULL) /* 2**61 - 1 */
#define FP_UNKNOWN UINT64_C(0x9E3779B97F4A7C15)
#define FP_NONE UINT64_C(0x6A09E667F3BCC908)
#define FP_TEXTNUM UINT64_C(0x3C6EF372FE94F82B)
#define FNV_BASIS UINT64_C(0xCBF29CE484222325)
#define FNV_PRIME UINT64_C(0x100000001B3)
#define XXP1 UINT64_C(11400714785074694791)
#define XXP2 UINT64_C(14029467366897019727)
#define XXP5 UINT64_C(2870177450012600261)

/* u * 2**s mod P for u < P, 0 <= s < 61 (2**61 == 1 mod P). */
static inline uint64_t
mod_shl(uint64_t u, int s)
{
    uint64_t r;
    if (s == 0)
        return u;
    r = ((u << s) & HASH_P) + (u >> (61 - s));
    return r >= HASH_P ? r - HASH_P : r;
}

/* Python's hash of an int given |v| mod P and its sign, as 64 bits. */
static inline uint64_t
int_hash(uint64_t mag, int negative)
{
    int64_t h = negative ? -(int64_t)mag : (int64_t)mag;
    if (h == -1)
        h = -2;
    return (uint64_t)h;
}

/* INT / LONG text: plain decimal hashes exactly, anything else FP_TEXTNUM. */
static uint64_t
text_int_fp(const unsigned char *s, const unsigned char *e, int is_long)
{
    int neg = 0;
    uint64_t u = 0;
    if (is_long && e > s && e[-1] == 'L')
        e--;
    else if (!is_long && e - s == 2 && s[0] == '0' && (s[1] == '0' || s[1] == '1'))
        return (uint64_t)(s[1] - '0');
    if (s < e && *s == '-') {
        neg = 1;
        s++;
    }
    if (s == e || (e - s > 1 && *s == '0'))
        return FP_TEXTNUM;
    for (; s < e; s++) {
        unsigned d = (unsigned)(*s - '0');
        uint64_t t;
        if (d > 9)
            return FP_TEXTNUM;
        t = mod_shl(u, 3) + mod_shl(u, 1) + d; /* u * 10 + d */
        while (t >= HASH_P)
            t -= HASH_P;
        u = t;
    }
    return int_hash(u, neg);
}

/* LONG1 / LONG4: little-endian two's complement. */
static uint64_t
long_bytes_fp(const unsigned char *p, Py_ssize_t n)
{
    uint64_t u = 0;
    int neg;
    if (n == 0)
        return 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        uint64_t t = mod_shl(u, 8) + p[i];
        u = t >= HASH_P ? t - HASH_P : t;
    }
    neg = (p[n - 1] & 0x80) != 0;
    if (neg) {
        /* |v| = 2**(8n) - U */
        uint64_t pw = mod_shl(1, (int)((8 * (uint64_t)n) % 61));
        u = pw >= u ? pw - u : pw + HASH_P - u;
        if (u >= HASH_P)
            u -= HASH_P;
    }
    return int_hash(u, neg);
}

/* BINFLOAT: Python's hash of a finite double is its exact value mod P:
 * v = M * 2**k with M a 53-bit integer. */
static int
binfloat_fp(const unsigned char *p, uint64_t *out)
{
    unsigned char b[8];
    double v, m;
    int e, neg = 0;
    uint64_t mant;
    int64_t k;
    for (int i = 0; i < 8; i++) /* big-endian on the wire */
        b[i] = p[7 - i];
    {
        uint64_t bits = 0;
        for (int i = 7; i >= 0; i--)
            bits = (bits << 8) | b[i];
        memcpy(&v, &bits, sizeof v);
    }
    if (v != v)
        return 0; /* NaN: hashed by identity */
    if (v == HUGE_VAL || v == -HUGE_VAL) {
        *out = (uint64_t)(int64_t)(v > 0 ? 314159 : -314159);
        return 1;
    }
    if (v < 0) {
        neg = 1;
        v = -v;
    }
    m = frexp(v, &e); /* v = m * 2**e, 0.5 <= m < 1 (or v == 0) */
    mant = (uint64_t)ldexp(m, 53);
    k = (int64_t)e - 53;
    k %= 61;
    if (k < 0)
        k += 61;
    *out = int_hash(mod_shl(mant % HASH_P, (int)k), neg);
    return 1;
}

static inline uint64_t
fnv_fp(const unsigned char *p, Py_ssize_t n, uint64_t tag)
{
    uint64_t h = FNV_BASIS ^ tag;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

/* The lane an item adds to a tuple's / frozenset's hash model. */
static inline uint64_t
an_lane(const an_state *st, const unsigned char *base, Py_ssize_t i)
{
    const an_item *it = &st->items[i];
    if (it->hasfp)
        return it->fp;
    if (AK_IS_LIT(it->kind))
        return fnv_fp(base + it->x[0], it->x[1], it->kind == AK_BYTES ? 2 : 1);
    return FP_UNKNOWN;
}

/* i holds the k items at ch: its depth is one more than theirs. */
static int
an_nest(an_state *st, Py_ssize_t i, const Py_ssize_t *ch, Py_ssize_t k)
{
    int64_t d = 0;
    if (i == 0)
        return 0;
    for (Py_ssize_t j = 0; j < k; j++)
        if (st->items[ch[j]].depth > d)
            d = st->items[ch[j]].depth;
    d += 1;
    if (d > st->items[i].depth) {
        if (d > st->max_depth) {
            st->limit = st->max_depth;
            return AN_DEEP;
        }
        st->items[i].depth = d;
    }
    return 0;
}

static int
an_add_items(an_state *st, Py_ssize_t i, Py_ssize_t n)
{
    int64_t c = i ? st->items[i].count + n : n;
    if (c > st->max_items) {
        st->limit = st->max_items;
        return AN_MANY_ITEMS;
    }
    if (i)
        st->items[i].count = c;
    return 0;
}

/* One more key k in container c (a dict key or a set element), inserted
 * by the opcode at offset at. */
static int
an_add_key(an_state *st, Py_ssize_t c, Py_ssize_t k, Py_ssize_t at)
{
    const an_item *it = &st->items[k];
    struct an_coll *e;
    if (!it->hasfp)
        return 0;
    if (st->ncoll == st->ccoll &&
        an_grow((void **)&st->coll, &st->ccoll, sizeof(struct an_coll),
                st->coll_buf, st->ncoll + 1) < 0)
        return AN_NOMEM;
    e = &st->coll[st->ncoll++];
    e->c = c;
    e->fp = it->fp;
    e->at = at;
    return 0;
}

static inline size_t
an_bucket(Py_ssize_t c, uint64_t fp, size_t mask)
{
    /* splitmix64's finalizer over fp and the container */
    uint64_t h = fp + (uint64_t)c * UINT64_C(0x9E3779B97F4A7C15);
    h = (h ^ (h >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    h = (h ^ (h >> 27)) * UINT64_C(0x94D049BB133111EB);
    h ^= h >> 31;
    return (size_t)h & mask;
}

static int
an_coll_cmp(const void *pa, const void *pb)
{
    const struct an_coll *a = pa, *b = pb;
    if (a->c != b->c)
        return a->c < b->c ? -1 : 1;
    if (a->fp != b->fp)
        return a->fp < b->fp ? -1 : 1;
    return a->at < b->at ? -1 : a->at > b->at;
}

/* After the walk: no container got more than max_coll keys of one hash
 * model.  The error names the first key (in byte order) past the limit.
 * Only containers with more than max_coll keys are sorted. */
static int
an_check_collisions(an_state *st, Py_ssize_t *fail_at)
{
    Py_ssize_t n = 0, worst = -1;
    for (Py_ssize_t i = 0; i < st->ncoll; i++)
        if (st->items[st->coll[i].c].count > st->max_coll)
            st->coll[n++] = st->coll[i];
    if (n <= st->max_coll)
        return 0;
    {
        /* Equal (container, fp) pairs share a bucket: keep only the keys of
           buckets over the limit (none, for real data), then sort those. */
        size_t nb = 4096, m = 0;
        uint32_t *cnt;
        while ((Py_ssize_t)nb < n / 4)
            nb <<= 1;
        cnt = PyMem_RawCalloc(nb, sizeof(uint32_t));
        if (cnt == NULL)
            return AN_NOMEM;
        for (Py_ssize_t i = 0; i < n; i++)
            cnt[an_bucket(st->coll[i].c, st->coll[i].fp, nb - 1)]++;
        for (Py_ssize_t i = 0; i < n; i++)
            if (cnt[an_bucket(st->coll[i].c, st->coll[i].fp, nb - 1)] >
                (uint64_t)st->max_coll)
                st->coll[m++] = st->coll[i];
        PyMem_RawFree(cnt);
        n = (Py_ssize_t)m;
        if (n <= st->max_coll)
            return 0;
    }
    qsort(st->coll, (size_t)n, sizeof(struct an_coll), an_coll_cmp);
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t j = i + 1;
        while (j < n && st->coll[j].c == st->coll[i].c &&
               st->coll[j].fp == st->coll[i].fp)
            j++;
        if (j - i > st->max_coll) {
            Py_ssize_t at = st->coll[i + st->max_coll].at;
            if (worst < 0 || at < worst)
                worst = at;
        }
        i = j;
    }
    if (worst < 0)
        return 0;
    st->limit = st->max_coll;
    *fail_at = worst;
    return AN_COLLISIONS;
}

/* A new container of the k items at ch (not yet attached as children). */
static int
an_container(an_state *st, const unsigned char *base, int kind,
             const Py_ssize_t *ch, Py_ssize_t k, Py_ssize_t *out, Py_ssize_t at)
{
    int rc;
    Py_ssize_t t = an_new(st, kind, 0, 0);
    if (t < 0)
        return AN_NOMEM;
    if ((rc = an_add_items(st, t, kind == AK_DICT ? k / 2 : k)) != 0)
        return rc;
    if ((rc = an_nest(st, t, ch, k)) != 0)
        return rc;
    if (kind == AK_TUPLE) {
        uint64_t acc = XXP5;
        for (Py_ssize_t j = 0; j < k; j++) {
            acc += an_lane(st, base, ch[j]) * XXP2;
            acc = (acc << 31) | (acc >> 33);
            acc *= XXP1;
        }
        acc += (uint64_t)k ^ (XXP5 ^ UINT64_C(3527539));
        st->items[t].fp = acc == UINT64_MAX ? UINT64_C(1546275796) : acc;
        st->items[t].hasfp = 1;
    }
    else if (kind == AK_FSET) {
        uint64_t h = 0;
        for (Py_ssize_t j = 0; j < k; j++) {
            uint64_t lane = an_lane(st, base, ch[j]);
            if ((rc = an_add_key(st, t, ch[j], at)) != 0)
                return rc;
            h ^= ((lane ^ UINT64_C(89869747)) ^ (lane << 16)) * UINT64_C(3644798167);
        }
        h ^= ((uint64_t)k + 1) * UINT64_C(1927868237);
        h ^= (h >> 11) ^ (h >> 25);
        st->items[t].fp = h * UINT64_C(69069) + UINT64_C(907133923);
        st->items[t].hasfp = 1;
    }
    else if (kind == AK_DICT) {
        for (Py_ssize_t j = 0; j + 1 < k; j += 2)
            if ((rc = an_add_key(st, t, ch[j], at)) != 0)
                return rc;
    }
    *out = t;
    return 0;
}

/* A number item with hash model fp (hasfp 0: not modelled). */
static inline Py_ssize_t
an_num(an_state *st, int hasfp, uint64_t fp)
{
    Py_ssize_t t = an_new(st, AK_NUM, 0, 0);
    if (t >= 0) {
        st->items[t].hasfp = (uint8_t)hasfp;
        st->items[t].fp = fp;
    }
    return t;
}

/* A call (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ) at offset off on callable c. */
static int
an_note_call(an_state *st, Py_ssize_t c, Py_ssize_t off)
{
    int k = st->items[c].kind;
    if (k == AK_GLOBAL)
        return 0;
    if (st->ncalls_ng == st->ccalls_ng &&
        an_grow((void **)&st->calls_ng, &st->ccalls_ng, sizeof(Py_ssize_t),
                st->calls_ng_buf, st->ncalls_ng + 1) < 0)
        return -1;
    st->calls_ng[st->ncalls_ng++] = off;
    if (k == AK_PREF) {
        if (st->ncalls_pid == st->ccalls_pid &&
            an_grow((void **)&st->calls_pid, &st->ccalls_pid,
                    sizeof(Py_ssize_t), st->calls_pid_buf,
                    st->ncalls_pid + 1) < 0)
            return -1;
        st->calls_pid[st->ncalls_pid++] = off;
    }
    return 0;
}

/* Parse [s, e) as plain decimal digits, saturating at INT64_MAX; -1 if
 * empty or not digits. */
static int64_t
an_decimal(const unsigned char *s, const unsigned char *e)
{
    uint64_t v = 0;
    int big = 0;
    if (s == e)
        return -1;
    for (; s < e; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (d > 9)
            return -1;
        if (!big) {
            if (v > (UINT64_C(0x7fffffffffffffff) - d) / 10)
                big = 1;
            else
                v = v * 10 + d;
        }
    }
    return big ? INT64_MAX : (int64_t)v;
}

/* Is there a byte < 0x80 in [s, e) equal to c? */
static inline int
an_has(const unsigned char *s, const unsigned char *e, unsigned char c)
{
    return s < e && memchr(s, c, (size_t)(e - s)) != NULL;
}

static void
an_walk(an_state *st, const unsigned char *base, Py_ssize_t len)
{
    const unsigned char *p = base;
    const unsigned char *end = base + len;
    skim_result *r = &st->r;
    int64_t max_memo = -1, stores = 0;
    int has_ext = 0, saw_binary = 0;

#define AN_FAIL(status_)                                               \
    do {                                                               \
        r->status = (status_);                                         \
        r->opcode = *op;                                               \
        r->offset = op - base;                                         \
        return;                                                        \
    } while (0)
#define AN_NOMEMORY()                                                  \
    do {                                                               \
        r->status = AN_NOMEM;                                          \
        return;                                                        \
    } while (0)
#define FAIL_TRUNC(needed)                                             \
    do {                                                               \
        r->status = SKIM_TRUNCATED;                                    \
        r->opcode = *op;                                               \
        r->offset = op - base;                                         \
        r->need = (uint64_t)(needed);                                  \
        r->have = (uint64_t)(end - p);                                 \
        return;                                                        \
    } while (0)
#define NEED(n)                                                        \
    do {                                                               \
        if ((size_t)(end - p) < (size_t)(n))                           \
            FAIL_TRUNC(n);                                             \
    } while (0)
    /* One newline-terminated argument: [ls, le) then p past the newline. */
#define READ_LINE(ls, le)                                              \
    do {                                                               \
        const unsigned char *nl_ =                                     \
            memchr(p, '\n', (size_t)(end - p));                        \
        if (nl_ == NULL)                                               \
            FAIL_TRUNC(0);                                             \
        (ls) = p;                                                      \
        (le) = nl_;                                                    \
        p = nl_ + 1;                                                   \
    } while (0)
#define PUSH(item_)                                                    \
    do {                                                               \
        Py_ssize_t it_ = (item_);                                      \
        if (it_ < 0)                                                   \
            AN_NOMEMORY();                                             \
        if (st->sp == st->cstack &&                                    \
            an_grow((void **)&st->stack, &st->cstack,                  \
                    sizeof(Py_ssize_t), st->stack_buf, st->sp + 1) < 0)\
            AN_NOMEMORY();                                             \
        st->stack[st->sp++] = it_;                                     \
    } while (0)
#define NEED_STACK(k)                                                  \
    do {                                                               \
        if (st->sp < (k))                                              \
            AN_FAIL(AN_UNDERFLOW);                                     \
    } while (0)
#define POP_MARK_TO(m)                                                 \
    do {                                                               \
        if (st->nmarks == 0)                                           \
            AN_FAIL(AN_NO_MARK);                                       \
        (m) = st->marks[--st->nmarks];                                 \
    } while (0)

    for (int which = 0; which < 2; which++) {
        r->which = which + 1;
        st->sp = 0;
        st->nmarks = 0;
        for (;;) {
            const unsigned char *op, *ls, *le, *ls2, *le2;
            uint64_t n;
            int64_t idx;
            Py_ssize_t m, x, t;

            if (p >= end) {
                r->status = SKIM_NO_STOP;
                r->offset = len;
                return;
            }
            op = p++;
            switch (*op) {
            case '(': case '.': case '0': case '2': case 'F': case 'I':
            case 'L': case 'N': case 'P': case 'R': case 'S': case 'V':
            case 'a': case 'b': case 'c': case 'd': case 'g': case 'i':
            case 'l': case 'p': case 's': case 't':
                break;
            default:
                saw_binary = 1;
            }

            switch (*op) {
            case '.': /* STOP */
                NEED_STACK(1);
                x = st->stack[--st->sp];
                if (which == 0) {
                    an_item *v = &st->items[x];
                    if (v->kind == AK_PREF)
                        st->class_pid = v->x[0];
                    else if (v->kind == AK_TUPLE && v->n == 2 &&
                             st->items[v->x[0]].kind == AK_PREF)
                        st->class_pid = st->items[v->x[0]].x[0];
                    if (v->kind == AK_GLOBAL)
                        an_use(st, x, USE_CLASS_META);
                    else {
                        an_use(st, x, USE_OTHER);
                        if (v->kind == AK_TUPLE && v->n == 2 &&
                            !(v->flags & AF_ATTR) &&
                            st->items[v->x[0]].kind == AK_GLOBAL) {
                            v->flags |= AF_ATTR;
                            an_reattr(st, v->x[0], USE_CLASS_META);
                        }
                    }
                    r->end1 = p - base;
                }
                else
                    an_use(st, x, USE_OTHER);
                goto next_pickle;

            case '(': /* MARK */
                if (st->nmarks == st->cmarks &&
                    an_grow((void **)&st->marks, &st->cmarks,
                            sizeof(Py_ssize_t), st->marks_buf,
                            st->nmarks + 1) < 0)
                    AN_NOMEMORY();
                st->marks[st->nmarks++] = st->sp;
                break;

            /* Memo stores. */
            case 'p': /* PUT */
                READ_LINE(ls, le);
                idx = an_decimal(ls, le);
                if (idx < 0)
                    AN_FAIL(SKIM_BAD_PUT);
                goto store;
            case 'q': /* BINPUT */
                NEED(1);
                idx = p[0];
                p += 1;
                goto store;
            case 'r': /* LONG_BINPUT */
                NEED(4);
                idx = le32(p);
                p += 4;
                goto store;
            case 0x94: /* MEMOIZE */
                if (stores > max_memo)
                    max_memo = stores;
                idx = st->memo_len;
                goto store_counted;
            store:
                if (idx > max_memo)
                    max_memo = idx;
            store_counted:
                stores++;
                if (idx > (int64_t)len) {
                    st->index = idx;
                    AN_FAIL(AN_MEMO_TOO_BIG);
                }
                if (idx > st->max_memo) {
                    st->index = idx;
                    st->limit = st->max_memo;
                    AN_FAIL(AN_MEMO_LIMIT);
                }
                NEED_STACK(1);
                if (idx >= st->cmemo) {
                    /* Double, but never beyond len + 1 entries. */
                    Py_ssize_t old = st->cmemo;
                    Py_ssize_t want = old > len / 2 ? len + 1 : old * 2;
                    if (want < (Py_ssize_t)idx + 1)
                        want = (Py_ssize_t)idx + 1;
                    if (an_grow((void **)&st->memo, &st->cmemo,
                                sizeof(Py_ssize_t), st->memo_buf, want) < 0)
                        AN_NOMEMORY();
                    for (Py_ssize_t i = old; i < st->cmemo; i++)
                        st->memo[i] = -1;
                }
                if (st->memo[idx] < 0)
                    st->memo_len++;
                st->memo[idx] = st->stack[st->sp - 1];
                break;

            /* Memo fetches. */
            case 'g': /* GET */
                READ_LINE(ls, le);
                idx = an_decimal(ls, le);
                if (idx < 0)
                    AN_FAIL(AN_BAD_GET);
                goto fetch;
            case 'h': /* BINGET */
                NEED(1);
                idx = p[0];
                p += 1;
                goto fetch;
            case 'j': /* LONG_BINGET */
                NEED(4);
                idx = le32(p);
                p += 4;
            fetch:
                if (idx >= st->cmemo || st->memo[idx] < 0) {
                    st->index = idx;
                    AN_FAIL(AN_MEMO_UNSET);
                }
                PUSH(st->memo[idx]);
                break;

            /* Constants and anonymous values. */
            case 0x97: /* NEXT_BUFFER */
                PUSH(0);
                break;
            case 'N': case 0x88: case 0x89: /* NONE NEWTRUE NEWFALSE */
                /* one shared item each: they are scalars */
                if (st->consts[0] == 0) {
                    st->consts[0] = an_num(st, 1, FP_NONE);
                    st->consts[1] = an_num(st, 1, 1);
                    st->consts[2] = an_num(st, 1, 0);
                    if (st->consts[2] < 0)
                        AN_NOMEMORY();
                }
                PUSH(st->consts[*op == 'N' ? 0 : *op == 0x88 ? 1 : 2]);
                break;
            case '}': case 0x8f: { /* EMPTY_DICT EMPTY_SET */
                int rc = an_container(st, base, *op == '}' ? AK_DICT : AK_SET,
                                      NULL, 0, &t, op - base);
                if (rc)
                    AN_FAIL(rc);
                PUSH(t);
                break;
            }
            case 'I': case 'L':
                READ_LINE(ls, le);
                PUSH(an_num(st, 1, text_int_fp(ls, le, *op == 'L')));
                break;
            case 'F':
                READ_LINE(ls, le);
                PUSH(an_num(st, 1, FP_TEXTNUM));
                break;
            case 'K':
                NEED(1);
                p += 1;
                PUSH(an_num(st, 1, p[-1]));
                break;
            case 'M':
                NEED(2);
                p += 2;
                PUSH(an_num(st, 1, (uint64_t)p[-2] | ((uint64_t)p[-1] << 8)));
                break;
            case 'J': {
                int32_t v;
                NEED(4);
                v = (int32_t)le32(p);
                p += 4;
                PUSH(an_num(st, 1, int_hash(v < 0 ? (uint64_t)(-(int64_t)v)
                                                  : (uint64_t)v, v < 0)));
                break;
            }
            case 'G': {
                uint64_t f = 0;
                int has;
                NEED(8);
                has = binfloat_fp(p, &f);
                p += 8;
                PUSH(an_num(st, has, f));
                break;
            }
            case 0x82: /* EXT1 */
                NEED(1);
                p += 1;
                has_ext = 1;
                PUSH(0);
                break;
            case 0x83: /* EXT2 */
                NEED(2);
                p += 2;
                has_ext = 1;
                PUSH(0);
                break;
            case 0x84: /* EXT4 */
                NEED(4);
                p += 4;
                has_ext = 1;
                PUSH(0);
                break;

            /* Counted literals. */
            case 'U': case 'C': case 0x8c: case 0x8a:
                NEED(1);
                n = p[0];
                p += 1;
                goto counted;
            case 'T': case 'B': case 'X': case 0x8b:
                NEED(4);
                n = le32(p);
                p += 4;
                goto counted;
            case 0x8d: case 0x8e: case 0x96:
                NEED(8);
                n = le64(p);
                p += 8;
            counted:
                if (n > (uint64_t)(end - p))
                    FAIL_TRUNC(n);
                {
                    int k;
                    switch (*op) {
                    case 'C': case 'B': case 0x8e: k = AK_BYTES; break;
                    case 'U': case 'T': k = AK_STR; break;
                    case 0x8c: case 'X': case 0x8d: k = AK_UNI; break;
                    case 0x8a: case 0x8b: k = AK_NUM; break; /* LONG1 LONG4 */
                    default: k = AK_ANON; /* BYTEARRAY8 */
                    }
                    if (k == AK_NUM)
                        PUSH(an_num(st, 1, long_bytes_fp(p, (Py_ssize_t)n)));
                    else if (k == AK_ANON)
                        PUSH(0);
                    else
                        PUSH(an_new(st, k, p - base, (Py_ssize_t)n));
                }
                p += n;
                break;

            /* Text literals. */
            case 'S': { /* STRING: quoted; trailing blanks stripped */
                const unsigned char *e;
                READ_LINE(ls, le);
                e = le;
                while (e > ls && e[-1] <= ' ')
                    e--;
                if (e - ls > 1 && (ls[0] == '"' || ls[0] == '\'') &&
                    e[-1] == ls[0] && !an_has(ls + 1, e - 1, '\\'))
                    PUSH(an_new(st, AK_TSTR, ls + 1 - base, e - ls - 2));
                else
                    PUSH(0);
                break;
            }
            case 'V': /* UNICODE: raw-unicode-escape */
                READ_LINE(ls, le);
                if (!an_has(ls, le, '\\'))
                    PUSH(an_new(st, AK_TUNI, ls - base, le - ls));
                else
                    PUSH(0);
                break;

            /* Containers. */
            case ')': case ']': { /* EMPTY_TUPLE EMPTY_LIST */
                int rc = an_container(st, base, *op == ')' ? AK_TUPLE : AK_LIST,
                                      NULL, 0, &t, op - base);
                if (rc)
                    AN_FAIL(rc);
                PUSH(t);
                break;
            }
            case 0x85: case 0x86: case 0x87: { /* TUPLE1 TUPLE2 TUPLE3 */
                Py_ssize_t k = *op - 0x84;
                int rc;
                NEED_STACK(k);
                rc = an_container(st, base, AK_TUPLE, st->stack + st->sp - k, k, &t,
                                  op - base);
                if (rc)
                    AN_FAIL(rc);
                for (Py_ssize_t i = st->sp - k; i < st->sp; i++)
                    an_add_child(st, t, st->stack[i]);
                st->sp -= k;
                PUSH(t);
                break;
            }
            case 't': case 'l': case 0x91: case 'd':
                /* TUPLE LIST FROZENSET DICT */
                POP_MARK_TO(m);
                if (m > st->sp) {
                    int rc;
                    if (*op != 'd') /* DICT: {} */
                        AN_FAIL(AN_UNDERFLOW);
                    rc = an_container(st, base, AK_DICT, NULL, 0, &t, op - base);
                    if (rc)
                        AN_FAIL(rc);
                    PUSH(t);
                    break;
                }
                {
                    int ck = *op == 't' ? AK_TUPLE : *op == 'l' ? AK_LIST
                             : *op == 'd' ? AK_DICT : AK_FSET;
                    int rc = an_container(st, base, ck, st->stack + m,
                                          st->sp - m, &t, op - base);
                    if (rc)
                        AN_FAIL(rc);
                }
                if (*op == 't' || *op == 'l') {
                    for (Py_ssize_t i = m; i < st->sp; i++)
                        an_add_child(st, t, st->stack[i]);
                }
                else {
                    for (Py_ssize_t i = m; i < st->sp; i++)
                        an_use(st, st->stack[i], USE_OTHER);
                }
                st->sp = m;
                PUSH(t);
                break;

            /* Stack manipulation. */
            case '0': /* POP */
                if (st->nmarks > 0 && st->marks[st->nmarks - 1] == st->sp)
                    st->nmarks--;
                else if (st->sp > 0)
                    st->sp--;
                else
                    AN_FAIL(AN_UNDERFLOW);
                break;
            case '1': /* POP_MARK */
                POP_MARK_TO(m);
                if (m < st->sp)
                    st->sp = m;
                break;
            case '2': /* DUP */
                NEED_STACK(1);
                PUSH(st->stack[st->sp - 1]);
                break;

            /* Items into the object below them. */
            case 'a': case 'e': case 's': case 'u': case 0x90: {
                /* APPEND APPENDS SETITEM SETITEMS ADDITEMS */
                Py_ssize_t target;
                an_item *ti;
                if (*op == 'a')
                    x = st->sp - 1;
                else if (*op == 's')
                    x = st->sp - 2;
                else
                    POP_MARK_TO(x);
                if (x > st->sp || x <= 0)
                    AN_FAIL(AN_UNDERFLOW);
                if (x == st->sp)
                    break;
                if (*op == 'u' && ((st->sp - x) & 1))
                    AN_FAIL(AN_ODD);
                target = st->stack[x - 1];
                {
                    int pairs = *op == 's' || *op == 'u';
                    Py_ssize_t k = st->sp - x;
                    int rc = an_add_items(st, target, pairs ? k / 2 : k);
                    if (rc == 0)
                        rc = an_nest(st, target, st->stack + x, k);
                    if (rc == 0 && pairs && st->items[target].kind == AK_DICT) {
                        for (Py_ssize_t i = x; i < st->sp && rc == 0; i += 2)
                            rc = an_add_key(st, target, st->stack[i], op - base);
                    }
                    else if (rc == 0 && *op == 0x90 &&
                             st->items[target].kind == AK_SET) {
                        for (Py_ssize_t i = x; i < st->sp && rc == 0; i++)
                            rc = an_add_key(st, target, st->stack[i], op - base);
                    }
                    if (rc)
                        AN_FAIL(rc);
                }
                ti = &st->items[target];
                if (ti->kind == AK_LIST && (*op == 'a' || *op == 'e')) {
                    for (Py_ssize_t i = x; i < st->sp; i++)
                        an_add_child(st, target, st->stack[i]);
                }
                else {
                    an_use(st, target, USE_OTHER);
                    if (ti->kind == AK_GLOBAL)
                        an_use(st, target, USE_ITEMS_TARGET);
                    if (ti->kind == AK_LIST)
                        ti->flags |= AF_TAINT;
                    for (Py_ssize_t i = x; i < st->sp; i++)
                        an_use(st, st->stack[i], USE_OTHER);
                }
                st->sp = x;
                break;
            }
            case 'b': { /* BUILD */
                Py_ssize_t target, state;
                int rc;
                NEED_STACK(2);
                state = st->stack[--st->sp];
                an_use(st, state, USE_OTHER);
                target = st->stack[st->sp - 1];
                if ((rc = an_nest(st, target, &state, 1)) != 0)
                    AN_FAIL(rc);
                an_use(st, target, USE_OTHER);
                if (st->items[target].kind == AK_GLOBAL)
                    an_use(st, target, USE_BUILD_TARGET);
                if (st->items[target].kind == AK_LIST)
                    st->items[target].flags |= AF_TAINT;
                break;
            }

            /* Calls. */
            case 'R': case 0x81: case 0x92: { /* REDUCE NEWOBJ NEWOBJ_EX */
                Py_ssize_t k = *op == 0x92 ? 3 : 2;
                NEED_STACK(k);
                for (Py_ssize_t i = st->sp - k + 1; i < st->sp; i++)
                    an_use(st, st->stack[i], USE_OTHER);
                if (an_note_call(st, st->stack[st->sp - k], op - base) < 0)
                    AN_NOMEMORY();
                an_use(st, st->stack[st->sp - k],
                       *op == 'R' ? USE_REDUCE : USE_NEWOBJ);
                t = an_new(st, AK_CALL, 0, 0);
                if (t < 0)
                    AN_NOMEMORY();
                {
                    int rc = an_nest(st, t, st->stack + st->sp - k, k);
                    if (rc)
                        AN_FAIL(rc);
                }
                st->sp -= k;
                PUSH(t);
                break;
            }
            case 'o': /* OBJ: MARK cls args... */
                POP_MARK_TO(m);
                if (m >= st->sp)
                    AN_FAIL(AN_UNDERFLOW);
                if (an_note_call(st, st->stack[m], op - base) < 0)
                    AN_NOMEMORY();
                an_use(st, st->stack[m], USE_INSTANTIATE);
                for (Py_ssize_t i = m + 1; i < st->sp; i++)
                    an_use(st, st->stack[i], USE_OTHER);
                t = an_new(st, AK_CALL, 0, 0);
                if (t < 0)
                    AN_NOMEMORY();
                {
                    int rc = an_nest(st, t, st->stack + m, st->sp - m);
                    if (rc)
                        AN_FAIL(rc);
                }
                st->sp = m;
                PUSH(t);
                break;
            case 'i': /* INST: MARK args... INST module name */
                READ_LINE(ls, le);
                READ_LINE(ls2, le2);
                POP_MARK_TO(m);
                if (m > st->sp)
                    AN_FAIL(AN_UNDERFLOW);
                if (an_add_global(st, 'i', op - base, p - base, -1,
                                  ls - base, le - ls, DEC_UTF8,
                                  ls2 - base, le2 - ls2, DEC_UTF8) < 0)
                    AN_NOMEMORY();
                for (Py_ssize_t i = m; i < st->sp; i++)
                    an_use(st, st->stack[i], USE_OTHER);
                t = an_new(st, AK_CALL, 0, 0);
                if (t < 0)
                    AN_NOMEMORY();
                {
                    int rc = an_nest(st, t, st->stack + m, st->sp - m);
                    if (rc)
                        AN_FAIL(rc);
                }
                st->sp = m;
                PUSH(t);
                break;
            case 'c': /* GLOBAL */
                READ_LINE(ls, le);
                READ_LINE(ls2, le2);
                t = an_new(st, AK_GLOBAL, st->nglobals, 0);
                if (t < 0 ||
                    an_add_global(st, 'c', op - base, p - base, t,
                                  ls - base, le - ls, DEC_UTF8,
                                  ls2 - base, le2 - ls2, DEC_UTF8) < 0)
                    AN_NOMEMORY();
                PUSH(t);
                break;
            case 0x93: { /* STACK_GLOBAL: module name */
                Py_ssize_t off[2], ln[2];
                int mode[2];
                NEED_STACK(2);
                st->has_sg = 1;
                for (int j = 0; j < 2; j++) {
                    Py_ssize_t i = st->stack[st->sp - 2 + j];
                    const an_item *it = &st->items[i];
                    an_use(st, i, USE_OTHER);
                    if (AK_IS_LIT(it->kind) && it->kind != AK_BYTES) {
                        off[j] = it->x[0];
                        ln[j] = it->x[1];
                        mode[j] = it->kind == AK_UNI ? DEC_UTF8 : DEC_LATIN1;
                    }
                    else {
                        off[j] = -1;
                        ln[j] = 0;
                        mode[j] = DEC_UTF8;
                    }
                }
                st->sp -= 2;
                t = an_new(st, AK_GLOBAL, st->nglobals, 0);
                if (t < 0 ||
                    an_add_global(st, 0x93, op - base, p - base, t, off[0],
                                  ln[0], mode[0], off[1], ln[1], mode[1]) < 0)
                    AN_NOMEMORY();
                PUSH(t);
                break;
            }

            /* Persistent references. */
            case 'Q': /* BINPERSID */
            {
                Py_ssize_t pid;
                int rc;
                NEED_STACK(1);
                pid = st->stack[--st->sp];
                if (an_classify(st, base, pid, which) < 0)
                    AN_NOMEMORY();
                t = an_new(st, AK_PREF, st->npids - 1, 0);
                if (t < 0)
                    AN_NOMEMORY();
                if ((rc = an_nest(st, t, &pid, 1)) != 0)
                    AN_FAIL(rc);
                PUSH(t);
                break;
            }
            case 'P': { /* PERSID: the text is the oid */
                an_pid *rec;
                READ_LINE(ls, le);
                if (st->npids == st->cpids &&
                    an_grow((void **)&st->pids, &st->cpids, sizeof(an_pid),
                            st->pids_buf, st->npids + 1) < 0)
                    AN_NOMEMORY();
                rec = &st->pids[st->npids++];
                rec->kind = PK_OID;
                rec->which = (uint8_t)which;
                rec->persid = 1;
                rec->p = rec->a = rec->l = rec->d = -1;
                rec->klass = -1;
                rec->oid_off = ls - base;
                rec->oid_len = le - ls;
                t = an_new(st, AK_PREF, st->npids - 1, 0);
                if (t < 0)
                    AN_NOMEMORY();
                {
                    int rc = an_nest(st, t, NULL, 0);
                    if (rc)
                        AN_FAIL(rc);
                }
                PUSH(t);
                break;
            }
            case 0x98: /* READONLY_BUFFER */
                NEED_STACK(1);
                an_use(st, st->stack[--st->sp], USE_OTHER);
                PUSH(0);
                break;

            /* No stack effect. */
            case 0x80: /* PROTO */
                NEED(1);
                if (which == 0 && st->protocol < 0)
                    st->protocol = p[0];
                p += 1;
                break;
            case 0x95: /* FRAME: 8-byte length; the contents are opcodes */
                NEED(8);
                n = le64(p);
                p += 8;
                if (n > (uint64_t)(end - p))
                    FAIL_TRUNC(n);
                st->has_frame = 1;
                break;

            default:
                r->status = SKIM_UNKNOWN_OPCODE;
                r->opcode = *op;
                r->offset = op - base;
                return;
            }
        }
    next_pickle:;
    }
    {
        Py_ssize_t at = 0;
        int rc = an_check_collisions(st, &at);
        if (rc) {
            r->status = rc;
            r->opcode = base[at];
            r->offset = at;
            r->which = at < r->end1 ? 1 : 2;
            return;
        }
    }
    if (st->protocol < 0)
        st->protocol = saw_binary ? 1 : 0;
    r->max_memo = max_memo;
    r->has_ext = has_ext;

#undef AN_FAIL
#undef AN_NOMEMORY
#undef FAIL_TRUNC
#undef NEED
#undef READ_LINE
#undef PUSH
#undef NEED_STACK
#undef POP_MARK_TO
}

#if PY_VERSION_HEX < 0x030A0000
#error "pclasses.record._skim needs Python 3.10 or newer"
#endif

PyDoc_STRVAR(skim_doc,
"skim(data, /) -> (end1, max_memo_index, has_ext)\n"
"\n"
"Walk the opcodes of the two pickles of a ZODB record without building\n"
"anything.  end1 is the offset just after the first pickle's STOP;\n"
"max_memo_index the largest memo index PUT/BINPUT/LONG_BINPUT/MEMOIZE\n"
"store in either pickle (-1 if none); has_ext whether EXT1/2/4 occurs.\n"
"data is any bytes-like object.  Raises ValueError, naming the byte\n"
"offset, for an unknown opcode, a truncated argument, a missing STOP or a\n"
"malformed PUT argument.  Data after the second STOP is not examined.");

static PyObject *
skim_skim(PyObject *module, PyObject *arg)
{
    skim_result r;
    (void)module;
    memset(&r, 0, sizeof(r));

    if (PyBytes_CheckExact(arg)) {
        const unsigned char *base =
            (const unsigned char *)PyBytes_AS_STRING(arg);
        Py_ssize_t len = PyBytes_GET_SIZE(arg);
        if (len >= SKIM_NOGIL_THRESHOLD) {
            Py_BEGIN_ALLOW_THREADS
            skim_buffer(base, len, &r);
            Py_END_ALLOW_THREADS
        }
        else {
            skim_buffer(base, len, &r);
        }
    }
    else {
        /* What the "y*" converter does: a contiguous bytes-like buffer. */
        Py_buffer view;
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        if (view.len >= SKIM_NOGIL_THRESHOLD) {
            Py_BEGIN_ALLOW_THREADS
            skim_buffer((const unsigned char *)view.buf, view.len, &r);
            Py_END_ALLOW_THREADS
        }
        else {
            skim_buffer((const unsigned char *)view.buf, view.len, &r);
        }
        PyBuffer_Release(&view);
    }
    if (r.status != SKIM_OK)
        return skim_error(&r);
    return skim_result_tuple(&r);
}

typedef struct {
    /* tuple subclasses (pclasses.record.analyze.Analysis, GlobalSite,
       PidSite); NULL: plain tuples */
    PyObject *analysis_type, *global_type, *pid_type;
    PyObject *use_type;             /* Use (IntFlag); NULL: plain ints */
    PyObject *use_cache[USE_CACHE]; /* Use members by value, filled lazily */
    PyObject *pk_str[PK_COUNT];     /* EdgeKind members (or strings) */
    PyObject *op_global, *op_inst, *op_stack_global;
    int64_t limits[4]; /* default max_depth, max_items, max_memo, max_coll */
    /* (module, name) pairs of census / rename by the raw bytes they decode
       from (decoding depends on nothing else): most records name the same
       few globals */
    struct pair_slot {
        uint64_t h;
        Py_ssize_t mlen, nlen;
        uint8_t mmode, nmode;
        PyObject *raw; /* bytes: module then name, as stored */
        PyObject *pair;
    } pairs[PAIR_CACHE];
} skim_state;

/* limits: a tuple of four ints from 1 to 2**62 (Limits.as_tuple()). */
static int
an_parse_limits(PyObject *obj, int64_t out[4])
{
    if (!PyTuple_CheckExact(obj) || PyTuple_GET_SIZE(obj) != 4)
        goto bad;
    for (int i = 0; i < 4; i++) {
        PyObject *v = PyTuple_GET_ITEM(obj, i);
        long long x;
        int overflow;
        if (!PyLong_CheckExact(v))
            goto bad;
        x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || x < 1 || x > ((long long)1 << 62)) {
            if (PyErr_Occurred())
                return -1;
            goto bad;
        }
        out[i] = x;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError,
                    "limits: expected a tuple of four ints from 1 to 2**62");
    return -1;
}

/* The Use member for a bit set (a new reference). */
static PyObject *
an_use_obj(skim_state *ms, long uses)
{
    PyObject *u;
    if (ms->use_type == NULL)
        return PyLong_FromLong(uses);
    if (uses >= 0 && uses < USE_CACHE && ms->use_cache[uses] != NULL)
        return Py_NewRef(ms->use_cache[uses]);
    u = PyObject_CallFunction(ms->use_type, "l", uses);
    if (u != NULL && uses >= 0 && uses < USE_CACHE)
        ms->use_cache[uses] = Py_NewRef(u);
    return u;
}

static PyObject *
an_error(const an_state *st, Py_ssize_t len)
{
    const skim_result *r = &st->r;
    const char *which = r->which == 1 ? "first" : "second";
    switch (r->status) {
    case AN_BAD_GET:
        PyErr_Format(PyExc_ValueError,
                     "malformed GET argument at offset %zd (%s pickle): "
                     "not decimal digits",
                     r->offset, which);
        return NULL;
    case AN_UNDERFLOW:
        PyErr_Format(PyExc_ValueError,
                     "stack underflow: opcode 0x%02x at offset %zd "
                     "(%s pickle)",
                     (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_NO_MARK:
        PyErr_Format(PyExc_ValueError,
                     "no MARK: opcode 0x%02x at offset %zd (%s pickle)",
                     (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_ODD:
        PyErr_Format(PyExc_ValueError,
                     "odd number of items: opcode 0x%02x at offset %zd "
                     "(%s pickle)",
                     (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_MEMO_UNSET:
        PyErr_Format(PyExc_ValueError,
                     "memo index %lld is not set at offset %zd (%s pickle)",
                     (long long)st->index, r->offset, which);
        return NULL;
    case AN_MEMO_TOO_BIG:
        PyErr_Format(PyExc_ValueError,
                     "memo index %lld at offset %zd (%s pickle) is more "
                     "than a %zd-byte record can fill",
                     (long long)st->index, r->offset, which, len);
        return NULL;
    case AN_NOMEM:
        return PyErr_NoMemory();
    case AN_DEEP:
        PyErr_Format(PyExc_ValueError,
                     "nesting deeper than %lld: opcode 0x%02x at offset %zd "
                     "(%s pickle)",
                     (long long)st->limit, (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_MANY_ITEMS:
        PyErr_Format(PyExc_ValueError,
                     "more than %lld items in one container: opcode 0x%02x at "
                     "offset %zd (%s pickle)",
                     (long long)st->limit, (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_COLLISIONS:
        PyErr_Format(PyExc_ValueError,
                     "more than %lld keys of one hash in one container: opcode "
                     "0x%02x at offset %zd (%s pickle)",
                     (long long)st->limit, (unsigned)r->opcode, r->offset, which);
        return NULL;
    case AN_MEMO_LIMIT:
        PyErr_Format(PyExc_ValueError,
                     "memo index %lld at offset %zd (%s pickle) is above the "
                     "limit %lld",
                     (long long)st->index, r->offset, which, (long long)st->limit);
        return NULL;
    default:
        return skim_error(r);
    }
}

/* UTF-8 (falling back to latin-1) or latin-1. */
static PyObject *
an_decode(const unsigned char *base, Py_ssize_t off, Py_ssize_t n, int mode)
{
    if (mode == DEC_UTF8) {
        PyObject *s = PyUnicode_DecodeUTF8((const char *)base + off, n, NULL);
        if (s != NULL || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return s;
        PyErr_Clear();
    }
    return PyUnicode_DecodeLatin1((const char *)base + off, n, NULL);
}

static inline int
an_nonpid(const an_state *st, Py_ssize_t i)
{
    return i >= 0 &&
           (st->items[i].pending > 0 || (st->items[i].flags & AF_NONPID));
}

/* Build a tuple (or an instance of the registered tuple subclass) of n new
 * references; steals them, also on failure. */
static PyObject *
an_pack(PyTypeObject *type, PyObject **v, Py_ssize_t n)
{
    PyObject *t;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (v[i] == NULL) {
            for (Py_ssize_t j = 0; j < n; j++)
                Py_XDECREF(v[j]);
            return NULL;
        }
    }
    t = type == NULL ? PyTuple_New(n) : type->tp_alloc(type, n);
    if (t == NULL) {
        for (Py_ssize_t j = 0; j < n; j++)
            Py_DECREF(v[j]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, v[i]);
    return t;
}

/* A list of Python ints from n offsets. */
static PyObject *
an_offsets(const Py_ssize_t *offs, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyLong_FromSsize_t(offs[i]);
        if (o == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, o);
    }
    return list;
}

static inline int
an_is_text(int k)
{
    return k >= AK_STR && k <= AK_TUNI;
}

static void
an_free_pairs(PyObject **pairs, Py_ssize_t n)
{
    if (pairs == NULL)
        return;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(pairs[i]);
    PyMem_Free(pairs);
}

/* The class part of a pid (see Analysis.pid_classes); a new reference. */
static PyObject *
an_class_part(an_state *st, const unsigned char *base, PyObject *globals,
              PyObject **pairs, Py_ssize_t k)
{
    const an_item *it;
    if (k < 0)
        Py_RETURN_NONE;
    it = &st->items[k];
    if (it->kind == AK_GLOBAL) {
        /* one (module, name) tuple per global, shared by its references */
        PyObject **slot = &pairs[it->x[0]];
        if (*slot == NULL) {
            PyObject *g = PyList_GET_ITEM(globals, it->x[0]);
            *slot = PyTuple_Pack(2, PyTuple_GET_ITEM(g, 0), PyTuple_GET_ITEM(g, 1));
            if (*slot == NULL)
                return NULL;
        }
        return Py_NewRef(*slot);
    }
    if (it->kind == AK_PREF)
        return PyLong_FromSsize_t(it->x[0]);
    if (it->kind == AK_TUPLE && it->n == 2 &&
        an_is_text(st->items[it->x[0]].kind) &&
        an_is_text(st->items[it->x[1]].kind)) {
        PyObject *f[2];
        for (int j = 0; j < 2; j++) {
            const an_item *c = &st->items[it->x[j]];
            f[j] = an_decode(base, c->x[0], c->x[1],
                             c->kind == AK_UNI ? DEC_UTF8 : DEC_LATIN1);
        }
        return an_pack(NULL, f, 2);
    }
    Py_RETURN_NONE;
}

static PyObject *
an_result(skim_state *ms, an_state *st, const unsigned char *base)
{
    PyObject *globals = NULL, *pids = NULL, *pid_classes = NULL, *v[13];
    PyObject **pairs = NULL;
    int ok = !st->has_sg && !st->r.has_ext;

    globals = PyList_New(st->nglobals);
    if (globals == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < st->nglobals; i++) {
        const an_global *g = &st->globals[i];
        PyObject *f[6], *t;
        long uses;
        if (g->item < 0)
            uses = USE_INSTANTIATE;
        else
            uses = st->items[g->item].bits |
                   (st->items[g->item].pending > 0 ? USE_OTHER : 0);
        f[0] = g->moff < 0 ? Py_NewRef(Py_None)
                           : an_decode(base, g->moff, g->mlen, g->mmode);
        f[1] = g->noff < 0 ? Py_NewRef(Py_None)
                           : an_decode(base, g->noff, g->nlen, g->nmode);
        f[2] = PyLong_FromSsize_t(g->off);
        f[3] = PyLong_FromSsize_t(g->end);
        f[4] = Py_NewRef(g->op == 'c'   ? ms->op_global
                         : g->op == 'i' ? ms->op_inst
                                        : ms->op_stack_global);
        f[5] = an_use_obj(ms, uses);
        t = an_pack((PyTypeObject *)ms->global_type, f, 6);
        if (t == NULL)
            goto error;
        PyList_SET_ITEM(globals, i, t);
    }

    /* An oid literal is shared when anything on the path from any pid to
       it (the literal, an inner tuple, the pid) has a use outside a pid:
       then patching the literal changes more than references. */
    for (Py_ssize_t i = 0; i < st->npids; i++) {
        const an_pid *rec = &st->pids[i];
        if (rec->kind != PK_UNKNOWN && !rec->persid &&
            (an_nonpid(st, rec->p) || an_nonpid(st, rec->a) ||
             an_nonpid(st, rec->l)))
            st->items[rec->l].flags |= AF_DIRTY;
    }
    pids = PyList_New(st->npids);
    if (pids == NULL)
        goto error;
    pid_classes = PyList_New(st->npids);
    if (pid_classes == NULL)
        goto error;
    if (st->npids > 0 && st->nglobals > 0) {
        pairs = PyMem_Calloc((size_t)st->nglobals, sizeof(PyObject *));
        if (pairs == NULL) {
            PyErr_NoMemory();
            goto error;
        }
    }
    for (Py_ssize_t i = 0; i < st->npids; i++) {
        const an_pid *rec = &st->pids[i];
        PyObject *f[6], *t;
        int shared = 0;
        if (rec->kind == PK_UNKNOWN)
            ok = 0;
        else if (!rec->persid) {
            int lk = st->items[rec->l].kind;
            shared = (st->items[rec->l].flags & AF_DIRTY) != 0;
            if (shared || (lk != AK_BYTES && lk != AK_STR))
                ok = 0;
        }
        else
            ok = 0;
        f[0] = Py_NewRef(ms->pk_str[rec->kind]);
        f[1] = PyLong_FromSsize_t(rec->oid_off);
        f[2] = PyLong_FromSsize_t(rec->oid_len);
        if (rec->d < 0)
            f[3] = Py_NewRef(Py_None);
        else {
            const an_item *d = &st->items[rec->d];
            f[3] = an_decode(base, d->x[0], d->x[1],
                             d->kind == AK_UNI ? DEC_UTF8 : DEC_LATIN1);
        }
        f[4] = Py_NewRef(shared ? Py_True : Py_False);
        f[5] = PyLong_FromLong(rec->which);
        t = an_pack((PyTypeObject *)ms->pid_type, f, 6);
        if (t == NULL)
            goto error;
        PyList_SET_ITEM(pids, i, t);
        t = an_class_part(st, base, globals, pairs,
                          rec->kind == PK_UNKNOWN ? -1 : rec->klass);
        if (t == NULL)
            goto error;
        PyList_SET_ITEM(pid_classes, i, t);
    }

    v[0] = PyLong_FromSsize_t(st->r.end1);
    v[1] = PyLong_FromLongLong((long long)st->r.max_memo);
    v[2] = Py_NewRef(st->r.has_ext ? Py_True : Py_False);
    v[3] = Py_NewRef(st->has_sg ? Py_True : Py_False);
    v[4] = PyLong_FromLong(st->protocol);
    v[5] = globals;
    v[6] = pids;
    v[7] = Py_NewRef(ok ? Py_True : Py_False);
    v[8] = Py_NewRef(st->has_frame ? Py_True : Py_False);
    v[9] = pid_classes;
    v[10] = PyLong_FromSsize_t(st->class_pid);
    v[11] = an_offsets(st->calls_ng, st->ncalls_ng);
    v[12] = an_offsets(st->calls_pid, st->ncalls_pid);
    an_free_pairs(pairs, st->nglobals);
    return an_pack((PyTypeObject *)ms->analysis_type, v, 13);

error:
    an_free_pairs(pairs, st->nglobals);
    Py_XDECREF(globals);
    Py_XDECREF(pids);
    Py_XDECREF(pid_classes);
    return NULL;
}

PyDoc_STRVAR(analyze_doc,
"analyze(data, limits=None, /) -> Analysis\n"
"\n"
"Run an abstract pickle machine (nothing is called) over the two pickles\n"
"of a ZODB record and report where its globals and persistent references\n"
"sit in the bytes.  See pclasses.record.analyze.  Raises ValueError, naming\n"
"the byte offset, for what skim refuses, a memo index larger than\n"
"len(data), a stack or mark underflow, a GET of an unset memo index, and\n"
"a record beyond limits (max_depth, max_items, max_memo, max_collisions).");

/* The bytes of a record argument: a bytes object directly, anything else
   through the buffer protocol (then *view must be released).  Returns 1
   when a view was taken, 0 for bytes, -1 with an exception set. */
static int
an_buffer(PyObject *arg, Py_buffer *view, const unsigned char **base,
          Py_ssize_t *len)
{
    if (PyBytes_CheckExact(arg)) {
        *base = (const unsigned char *)PyBytes_AS_STRING(arg);
        *len = PyBytes_GET_SIZE(arg);
        return 0;
    }
    if (PyObject_GetBuffer(arg, view, PyBUF_SIMPLE) < 0)
        return -1;
    *base = (const unsigned char *)view->buf;
    *len = view->len;
    return 1;
}

/* Initialise st with the limits and walk the record; only immutable bytes
   (no buffer view) are walked without the GIL.  st.r.status tells. */
static void
an_run(an_state *st, const int64_t *limits, const unsigned char *base,
       Py_ssize_t len, int have_view)
{
    an_init(st);
    st->max_depth = limits[0];
    st->max_items = limits[1];
    st->max_memo = limits[2];
    st->max_coll = limits[3];
    if (!have_view && len >= SKIM_NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        an_walk(st, base, len);
        Py_END_ALLOW_THREADS
    }
    else {
        an_walk(st, base, len);
    }
}

static PyObject *
skim_analyze(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    an_state st;
    PyObject *result, *arg;
    Py_buffer view;
    const unsigned char *base;
    Py_ssize_t len;
    int have_view = 0;
    int64_t limits[4];

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError,
                        "analyze(data, limits=None) takes 1 or 2 arguments");
        return NULL;
    }
    arg = args[0];
    memcpy(limits, ms->limits, sizeof limits);
    if (nargs == 2 && args[1] != Py_None &&
        an_parse_limits(args[1], limits) < 0)
        return NULL;

    have_view = an_buffer(arg, &view, &base, &len);
    if (have_view < 0)
        return NULL;
    an_run(&st, limits, base, len, have_view);
    if (st.r.status != SKIM_OK)
        result = an_error(&st, len);
    else
        result = an_result(ms, &st, base);
    an_free(&st);
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(census_doc,
"census(data, /) -> (klass, names)\n"
"\n"
"What a class census needs from a record, walked like analyze(data) (same\n"
"limits, same ValueError): klass is (module, name) of the first global\n"
"used as the record's class metadata, or None; names is a tuple of the\n"
"(module, name) of every other GLOBAL / INST / literal STACK_GLOBAL, in\n"
"byte order (repeats kept).  See pclasses.record.analyze.census_py.");

/* (module, name) of global g, a new reference. */
static PyObject *
an_pair(const unsigned char *base, const an_global *g)
{
    PyObject *f[2];
    f[0] = an_decode(base, g->moff, g->mlen, g->mmode);
    f[1] = an_decode(base, g->noff, g->nlen, g->nmode);
    return an_pack(NULL, f, 2);
}

/* an_pair through the module's cache: the same new reference. */
static PyObject *
an_pair_cached(skim_state *ms, const unsigned char *base, const an_global *g)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    struct pair_slot *slot;
    PyObject *pair, *raw;
    if (g->mlen + g->nlen > PAIR_CACHE_MAX)
        return an_pair(base, g);
    for (Py_ssize_t i = 0; i < g->mlen; i++)
        h = (h ^ base[g->moff + i]) * 0x100000001B3ULL;
    h = (h ^ 0x100) * 0x100000001B3ULL;
    for (Py_ssize_t i = 0; i < g->nlen; i++)
        h = (h ^ base[g->noff + i]) * 0x100000001B3ULL;
    h = (h ^ ((uint64_t)g->mmode << 8 | g->nmode)) * 0x100000001B3ULL;
    slot = &ms->pairs[(h >> 7) & (PAIR_CACHE - 1)];
    if (slot->pair != NULL && slot->h == h && slot->mlen == g->mlen &&
        slot->nlen == g->nlen && slot->mmode == g->mmode &&
        slot->nmode == g->nmode &&
        memcmp(PyBytes_AS_STRING(slot->raw), base + g->moff, (size_t)g->mlen) == 0 &&
        memcmp(PyBytes_AS_STRING(slot->raw) + g->mlen, base + g->noff,
               (size_t)g->nlen) == 0)
        return Py_NewRef(slot->pair);
    pair = an_pair(base, g);
    if (pair == NULL)
        return NULL;
    raw = PyBytes_FromStringAndSize(NULL, g->mlen + g->nlen);
    if (raw == NULL) {
        PyErr_Clear(); /* not cached, still right */
        return pair;
    }
    memcpy(PyBytes_AS_STRING(raw), base + g->moff, (size_t)g->mlen);
    memcpy(PyBytes_AS_STRING(raw) + g->mlen, base + g->noff, (size_t)g->nlen);
    Py_XSETREF(slot->raw, raw);
    Py_XSETREF(slot->pair, Py_NewRef(pair));
    slot->h = h;
    slot->mlen = g->mlen;
    slot->nlen = g->nlen;
    slot->mmode = g->mmode;
    slot->nmode = g->nmode;
    return pair;
}

static PyObject *
skim_census(PyObject *module, PyObject *arg)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    an_state st;
    PyObject *result = NULL, *klass = NULL, *names = NULL;
    Py_buffer view;
    const unsigned char *base;
    Py_ssize_t len, nnames = 0, k = 0, meta = -1;
    int have_view = 0;

    have_view = an_buffer(arg, &view, &base, &len);
    if (have_view < 0)
        return NULL;
    an_run(&st, ms->limits, base, len, have_view);
    if (st.r.status != SKIM_OK) {
        result = an_error(&st, len);
        goto done;
    }
    for (Py_ssize_t i = 0; i < st.nglobals; i++) {
        const an_global *g = &st.globals[i];
        long uses;
        if (g->moff < 0 || g->noff < 0)
            continue;
        if (g->item < 0)
            uses = USE_INSTANTIATE;
        else
            uses = st.items[g->item].bits;
        if (meta < 0 && (uses & USE_CLASS_META))
            meta = i;
        else
            nnames++;
    }
    if (meta >= 0) {
        klass = an_pair_cached(ms, base, &st.globals[meta]);
        if (klass == NULL)
            goto done;
    }
    else
        klass = Py_NewRef(Py_None);
    names = PyTuple_New(nnames);
    if (names == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < st.nglobals && k < nnames; i++) {
        const an_global *g = &st.globals[i];
        PyObject *t;
        if (g->moff < 0 || g->noff < 0 || i == meta)
            continue;
        t = an_pair_cached(ms, base, g);
        if (t == NULL)
            goto done;
        PyTuple_SET_ITEM(names, k++, t);
    }
    result = PyTuple_Pack(2, klass, names);
done:
    Py_XDECREF(klass);
    Py_XDECREF(names);
    an_free(&st);
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(rename_doc,
"rename(data, table, /) -> (new, renamed) or None\n"
"\n"
"The fast path of offline repair.  Walks data like analyze(data) (same\n"
"limits, same ValueError), looks up table[(module, name)] for every\n"
"GLOBAL / INST (None: keep it; else the new (module, name)) and replaces\n"
"the opcodes to rename.  The result is proven like\n"
"equivalence.substitution_differences proves it: the bytes between the\n"
"replaced opcodes are copied unchanged, each replacement is one opcode of\n"
"printable names, and the new bytes walk (skim) with the split point moved\n"
"by exactly the replacements before it and the same memo and extension\n"
"codes.  renamed maps each renamed (module, name) to its target; (data, {})\n"
"when nothing is renamed.  None when the record needs the full path: a\n"
"STACK_GLOBAL, a frame with something to rename, class metadata that is\n"
"not a global (format 3/7, a persistent class), a target that is not a\n"
"pair of printable strings, or a proof that fails.");

typedef struct {
    Py_ssize_t start, end;
    PyObject *text; /* the new opcode, bytes */
} an_edit;

static PyObject *
an_opcode_text(char op, PyObject *target)
{
    PyObject *m, *n;
    const char *ms, *ns;
    Py_ssize_t ml, nl;
    PyObject *out;
    char *w;
    if (!PyTuple_CheckExact(target) || PyTuple_GET_SIZE(target) != 2)
        return NULL;
    m = PyTuple_GET_ITEM(target, 0);
    n = PyTuple_GET_ITEM(target, 1);
    if (!PyUnicode_CheckExact(m) || !PyUnicode_CheckExact(n))
        return NULL;
    for (int j = 0; j < 2; j++) {
        PyObject *u = j ? n : m;
        int kind = PyUnicode_KIND(u);
        const void *d = PyUnicode_DATA(u);
        for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(u); i++)
            if (!Py_UNICODE_ISPRINTABLE(PyUnicode_READ(kind, d, i)))
                return NULL;
    }
    ms = PyUnicode_AsUTF8AndSize(m, &ml);
    if (ms == NULL) {
        PyErr_Clear();
        return NULL;
    }
    ns = PyUnicode_AsUTF8AndSize(n, &nl);
    if (ns == NULL) {
        PyErr_Clear();
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, ml + nl + 3);
    if (out == NULL) {
        PyErr_Clear();
        return NULL;
    }
    w = PyBytes_AS_STRING(out);
    *w++ = op;
    memcpy(w, ms, (size_t)ml);
    w += ml;
    *w++ = '\n';
    memcpy(w, ns, (size_t)nl);
    w += nl;
    *w++ = '\n';
    return out;
}

static PyObject *
skim_rename(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    an_state st;
    PyObject *result = NULL, *renamed = NULL, *data, *table, *newb = NULL;
    const unsigned char *base;
    Py_ssize_t len, nedits = 0, newlen, shift1 = 0;
    an_edit *edits = NULL;
    int meta = 0, fallback = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rename(data, table) takes 2 arguments");
        return NULL;
    }
    data = args[0];
    table = args[1];
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "rename: data must be bytes");
        return NULL;
    }
    base = (const unsigned char *)PyBytes_AS_STRING(data);
    len = PyBytes_GET_SIZE(data);
    an_run(&st, ms->limits, base, len, 0);
    if (st.r.status != SKIM_OK) {
        result = an_error(&st, len);
        goto done;
    }
    if (st.has_sg)
        goto full;
    renamed = PyDict_New();
    if (renamed == NULL)
        goto done;
    if (st.nglobals > 0) {
        edits = PyMem_Calloc((size_t)st.nglobals, sizeof(an_edit));
        if (edits == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    newlen = len;
    for (Py_ssize_t i = 0; i < st.nglobals; i++) {
        const an_global *g = &st.globals[i];
        PyObject *pair, *target, *text;
        long uses = g->item < 0 ? USE_INSTANTIATE
                                : st.items[g->item].bits |
                                      (st.items[g->item].pending > 0 ? USE_OTHER : 0);
        if (uses & USE_CLASS_META)
            meta = 1;
        if (g->moff < 0 || g->noff < 0 || (g->op != 'c' && g->op != 'i'))
            continue;
        pair = an_pair_cached(ms, base, g);
        if (pair == NULL)
            goto done;
        target = PyObject_GetItem(table, pair);
        if (target == NULL) {
            Py_DECREF(pair);
            goto done;
        }
        if (target == Py_None) {
            Py_DECREF(target);
            Py_DECREF(pair);
            continue;
        }
        text = an_opcode_text((char)g->op, target);
        if (text == NULL || PyDict_SetItem(renamed, pair, target) < 0) {
            Py_XDECREF(text);
            Py_DECREF(target);
            Py_DECREF(pair);
            if (PyErr_Occurred())
                goto done;
            goto full;
        }
        Py_DECREF(target);
        Py_DECREF(pair);
        edits[nedits].start = g->off;
        edits[nedits].end = g->end;
        edits[nedits].text = text;
        nedits++;
        newlen += PyBytes_GET_SIZE(text) - (g->end - g->off);
        if (g->end <= st.r.end1)
            shift1 += PyBytes_GET_SIZE(text) - (g->end - g->off);
    }
    if (!meta)
        goto full; /* class named by strings or a persistent class */
    if (nedits == 0) {
        result = PyTuple_Pack(2, data, renamed);
        goto done;
    }
    if (st.has_frame)
        goto full;
    newb = PyBytes_FromStringAndSize(NULL, newlen);
    if (newb == NULL)
        goto done;
    {
        char *w = PyBytes_AS_STRING(newb);
        Py_ssize_t pos = 0;
        skim_result r;
        for (Py_ssize_t i = 0; i < nedits; i++) {
            Py_ssize_t tl = PyBytes_GET_SIZE(edits[i].text);
            if (edits[i].start < pos) { /* not in byte order: never written */
                fallback = 1;
                break;
            }
            memcpy(w, base + pos, (size_t)(edits[i].start - pos));
            w += edits[i].start - pos;
            memcpy(w, PyBytes_AS_STRING(edits[i].text), (size_t)tl);
            w += tl;
            pos = edits[i].end;
        }
        if (!fallback) {
            memcpy(w, base + pos, (size_t)(len - pos));
            /* the proof: the new bytes walk with the split point where the
               replacements put it, and the same memo and extension codes */
            memset(&r, 0, sizeof r);
            skim_buffer((const unsigned char *)PyBytes_AS_STRING(newb), newlen, &r);
            if (r.status != SKIM_OK || r.end1 != st.r.end1 + shift1 ||
                r.max_memo != st.r.max_memo || r.has_ext != st.r.has_ext)
                fallback = 1;
        }
    }
    if (fallback)
        goto full;
    result = PyTuple_Pack(2, newb, renamed);
    goto done;
full:
    result = Py_NewRef(Py_None);
done:
    if (edits != NULL) {
        for (Py_ssize_t i = 0; i < nedits; i++)
            Py_XDECREF(edits[i].text);
        PyMem_Free(edits);
    }
    Py_XDECREF(newb);
    Py_XDECREF(renamed);
    an_free(&st);
    return result;
}

static int
an_check_tuple_type(PyObject *arg, const char *what)
{
    PyTypeObject *type = (PyTypeObject *)arg;
    if (!PyType_Check(arg) || !PyType_IsSubtype(type, &PyTuple_Type) ||
        type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        type->tp_itemsize != PyTuple_Type.tp_itemsize ||
        type->tp_alloc == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected a tuple subclass without extra fields "
                     "(a NamedTuple)", what);
        return -1;
    }
    return 0;
}

static void
an_clear_types(skim_state *ms)
{
    Py_CLEAR(ms->analysis_type);
    Py_CLEAR(ms->global_type);
    Py_CLEAR(ms->pid_type);
    Py_CLEAR(ms->use_type);
    for (int i = 0; i < USE_CACHE; i++)
        Py_CLEAR(ms->use_cache[i]);
}

static PyObject *
skim_set_types(PyObject *module, PyObject *args)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    PyObject *analysis, *global, *pid, *use, *kinds;
    if (!PyArg_ParseTuple(args, "OOOOO!:_set_types", &analysis, &global, &pid,
                          &use, &PyTuple_Type, &kinds))
        return NULL;
    if (an_check_tuple_type(analysis, "analysis") < 0 ||
        an_check_tuple_type(global, "global site") < 0 ||
        an_check_tuple_type(pid, "pid site") < 0)
        return NULL;
    if (!PyCallable_Check(use)) {
        PyErr_SetString(PyExc_TypeError, "use: expected a callable");
        return NULL;
    }
    if (PyTuple_GET_SIZE(kinds) != PK_COUNT) {
        PyErr_Format(PyExc_TypeError, "kinds: expected %d members",
                     (int)PK_COUNT);
        return NULL;
    }
    for (int i = 0; i < PK_COUNT; i++) {
        PyObject *k = PyTuple_GET_ITEM(kinds, i);
        int eq;
        if (!PyUnicode_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "kinds: expected strings");
            return NULL;
        }
        eq = PyUnicode_CompareWithASCIIString(k, pk_names[i]);
        if (eq != 0) {
            PyErr_Format(PyExc_ValueError, "kinds[%d]: expected %s", i,
                         pk_names[i]);
            return NULL;
        }
    }
    an_clear_types(ms);
    ms->analysis_type = Py_NewRef(analysis);
    ms->global_type = Py_NewRef(global);
    ms->pid_type = Py_NewRef(pid);
    ms->use_type = Py_NewRef(use);
    for (int i = 0; i < PK_COUNT; i++)
        Py_XSETREF(ms->pk_str[i], Py_NewRef(PyTuple_GET_ITEM(kinds, i)));
    Py_RETURN_NONE;
}

static PyObject *
skim_set_default_limits(PyObject *module, PyObject *arg)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    int64_t limits[4];
    if (an_parse_limits(arg, limits) < 0)
        return NULL;
    memcpy(ms->limits, limits, sizeof limits);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------
 * refs(data, limits=None): analyze's walk with a lean result, for walks over
 * whole databases (pclasses.record.edges.split_targets; added for the tree
 * reference check and gc, issue 14).  Same errors and limits as analyze.
 * ------------------------------------------------------------------------ */

static int
an_text_is(const unsigned char *base, Py_ssize_t off, Py_ssize_t n,
           const char *want)
{
    size_t len = strlen(want);
    return off >= 0 && (size_t)n == len && memcmp(base + off, want, len) == 0;
}

/* rr_single: the one remote reference of a record in the form ZODB's
 * pickler writes it (pclasses.record.remote.single_remote_site is the twin;
 * keep the two in step): 1 with the offsets of oid, class, database and via
 * set, 0 for any other record. */
static Py_ssize_t
rr_find(const unsigned char *b, Py_ssize_t n, Py_ssize_t from,
        const unsigned char *needle, Py_ssize_t k)
{
    for (Py_ssize_t i = from; i + k <= n; i++) {
        const unsigned char *p = memchr(b + i, needle[0], (size_t)(n - k + 1 - i));
        if (p == NULL)
            return -1;
        i = p - b;
        if (memcmp(p, needle, (size_t)k) == 0)
            return i;
    }
    return -1;
}

static Py_ssize_t
rr_skip_put(const unsigned char *b, Py_ssize_t n, Py_ssize_t i)
{
    if (i < n && b[i] == 0x71)
        return i + 2;
    if (i < n && b[i] == 0x72)
        return i + 5;
    return i;
}

/* i at a GLOBAL: the offset after its two lines, or -1. */
static Py_ssize_t
rr_after_global(const unsigned char *b, Py_ssize_t n, Py_ssize_t i)
{
    const unsigned char *p;
    if (i + 1 >= n)
        return -1;
    p = memchr(b + i + 1, '\n', (size_t)(n - i - 1));
    if (p == NULL)
        return -1;
    i = p - b + 1;
    if (i >= n)
        return -1;
    p = memchr(b + i, '\n', (size_t)(n - i));
    return p == NULL ? -1 : p - b + 1;
}

/* A BINUNICODE / SHORT_BINUNICODE at *i: its payload's offset and length. */
static int
rr_text(const unsigned char *b, Py_ssize_t n, Py_ssize_t *i, Py_ssize_t *off,
        Py_ssize_t *len)
{
    Py_ssize_t j = *i, l;
    if (j >= n)
        return -1;
    if (b[j] == 0x58) {
        if (j + 5 > n)
            return -1;
        l = (Py_ssize_t)le32(b + j + 1);
        j += 5;
    }
    else if (b[j] == 0x8c) {
        if (j + 2 > n)
            return -1;
        l = b[j + 1];
        j += 2;
    }
    else
        return -1;
    if (l > n - j)
        return -1;
    *off = j;
    *len = l;
    *i = j + l;
    return 0;
}

static int
rr_oid8(const unsigned char *b, Py_ssize_t n, Py_ssize_t i)
{
    return i + 10 <= n && b[i] == 0x43 && b[i + 1] == 8;
}

static int
rr_single(const unsigned char *b, Py_ssize_t n, Py_ssize_t start,
          Py_ssize_t *oid, Py_ssize_t *via, Py_ssize_t *koff, Py_ssize_t *klen,
          Py_ssize_t *doff, Py_ssize_t *dlen)
{
    static const unsigned char marker[] = "RemoteReference";
    Py_ssize_t i, first;
    if (start <= 0 || start >= n || b[start] != 0x63)
        return 0;
    first = rr_find(b, n, 0, marker, 15);
    if (first < 0 || rr_find(b, n, first + 1, marker, 15) >= 0)
        return 0;
    i = rr_after_global(b, n, start);
    if (i < 0 || i >= n)
        return 0;
    if (b[i] == 0x71 || b[i] == 0x72) {
        unsigned char get[16];
        uint32_t k;
        int m;
        if (b[i] == 0x71) {
            if (i + 2 > n)
                return 0;
            k = b[i + 1];
        }
        else {
            if (i + 5 > n)
                return 0;
            k = le32(b + i + 1);
        }
        get[0] = 'j';
        get[1] = (unsigned char)(k & 0xff);
        get[2] = (unsigned char)((k >> 8) & 0xff);
        get[3] = (unsigned char)((k >> 16) & 0xff);
        get[4] = (unsigned char)((k >> 24) & 0xff);
        if (rr_find(b, n, 0, get, 5) >= 0)
            return 0;
        m = snprintf((char *)get, sizeof get, "g%u\n", (unsigned)k);
        if (m > 0 && rr_find(b, n, 0, get, m) >= 0)
            return 0;
        if (k < 256) {
            get[0] = 'h';
            get[1] = (unsigned char)k;
            if (rr_find(b, n, 0, get, 2) >= 0)
                return 0;
        }
        i += b[i] == 0x71 ? 2 : 5;
    }
    if (i >= n || b[i] != 0x28) /* MARK */
        return 0;
    i++;
    if (!rr_oid8(b, n, i))
        return 0;
    *via = i + 2;
    i = rr_skip_put(b, n, i + 10);
    if (i >= n)
        return 0;
    if (b[i] != 0x51) { /* an (oid, class) tuple */
        if (b[i] == 0x63) {
            i = rr_after_global(b, n, i);
            if (i < 0)
                return 0;
        }
        else if (b[i] == 0x68)
            i += 2;
        else if (b[i] == 0x6a)
            i += 5;
        else
            return 0;
        i = rr_skip_put(b, n, i);
        if (i >= n || b[i] != 0x86)
            return 0;
        i = rr_skip_put(b, n, i + 1);
        if (i >= n || b[i] != 0x51)
            return 0;
    }
    i++;
    if (!rr_oid8(b, n, i))
        return 0;
    *oid = i + 2;
    i = rr_skip_put(b, n, i + 10);
    if (i >= n)
        return 0;
    if (b[i] == 0x4e) {
        *koff = -1;
        *klen = 0;
        i++;
    }
    else if (rr_text(b, n, &i, koff, klen) < 0)
        return 0;
    i = rr_skip_put(b, n, i);
    if (rr_text(b, n, &i, doff, dlen) < 0)
        return 0;
    i = rr_skip_put(b, n, i);
    if (i >= n || b[i] != 0x74) /* TUPLE */
        return 0;
    i = rr_skip_put(b, n, i + 1);
    return i < n && b[i] == 0x52; /* REDUCE */
}

static PyObject *
rr_site(const unsigned char *b, Py_ssize_t n, Py_ssize_t start)
{
    Py_ssize_t oid, via, koff, klen, doff, dlen;
    PyObject *f[4];
    if (!rr_single(b, n, start, &oid, &via, &koff, &klen, &doff, &dlen))
        Py_RETURN_NONE;
    f[0] = PyBytes_FromStringAndSize((const char *)b + oid, 8);
    f[1] = koff < 0 ? Py_NewRef(Py_None)
                    : PyUnicode_DecodeUTF8((const char *)b + koff, klen, NULL);
    f[2] = PyUnicode_DecodeUTF8((const char *)b + doff, dlen, NULL);
    f[3] = PyBytes_FromStringAndSize((const char *)b + via, 8);
    if ((f[1] == NULL || f[2] == NULL) &&
        PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        for (int j = 0; j < 4; j++)
            Py_XDECREF(f[j]);
        Py_RETURN_NONE; /* not text: the full walker decides */
    }
    return an_pack(NULL, f, 4);
}

static PyObject *
refs_result(skim_state *ms, an_state *st, const unsigned char *base, Py_ssize_t len)
{
    PyObject *plain = NULL, *other = NULL, *v[4];
    Py_ssize_t nplain = 0, meta_end = -1, remote = -1;
    const an_global *first = NULL;
    char *out;

    for (Py_ssize_t i = 0; i < st->npids; i++) {
        const an_pid *rec = &st->pids[i];
        if (rec->oid_off >= 0 && rec->oid_len == 8 &&
            (rec->kind == PK_OID || rec->kind == PK_OID_CLASS))
            nplain++;
    }
    plain = PyBytes_FromStringAndSize(NULL, nplain * 8);
    if (plain == NULL)
        return NULL;
    out = PyBytes_AS_STRING(plain);
    for (Py_ssize_t i = 0; i < st->npids; i++) {
        const an_pid *rec = &st->pids[i];
        PyObject *t, *f[3];
        if (rec->kind == PK_UNKNOWN || rec->oid_off < 0)
            continue;
        if (rec->oid_len == 8 &&
            (rec->kind == PK_OID || rec->kind == PK_OID_CLASS)) {
            memcpy(out, base + rec->oid_off, 8);
            out += 8;
            continue;
        }
        if (other == NULL && (other = PyList_New(0)) == NULL)
            goto error;
        f[0] = Py_NewRef(ms->pk_str[rec->kind]);
        f[1] = PyBytes_FromStringAndSize((const char *)base + rec->oid_off,
                                         rec->oid_len);
        if (rec->d < 0)
            f[2] = Py_NewRef(Py_None);
        else {
            const an_item *d = &st->items[rec->d];
            f[2] = an_decode(base, d->x[0], d->x[1],
                             d->kind == AK_UNI ? DEC_UTF8 : DEC_LATIN1);
        }
        t = an_pack(NULL, f, 3);
        if (t == NULL)
            goto error;
        if (PyList_Append(other, t) < 0) {
            Py_DECREF(t);
            goto error;
        }
        Py_DECREF(t);
    }
    /* Where a walk for remote references may begin (edges._remote_edges'
       rule): -1 when no global names RemoteReference. */
    for (Py_ssize_t i = 0; i < st->nglobals; i++) {
        const an_global *g = &st->globals[i];
        long uses = g->item < 0 ? USE_INSTANTIATE
                                : st->items[g->item].bits |
                                  (st->items[g->item].pending > 0 ? USE_OTHER : 0);
        if (uses & USE_CLASS_META)
            meta_end = g->end;
        else if (first == NULL &&
                 an_text_is(base, g->moff, g->mlen, "pclasses.tree.reference") &&
                 an_text_is(base, g->noff, g->nlen, "RemoteReference"))
            first = g;
    }
    if (first != NULL)
        remote = (first->op == 'c' && meta_end >= 0 && meta_end < first->off)
                     ? first->off : 0;
    v[0] = plain;
    v[1] = other != NULL ? other : Py_NewRef(Py_None);
    v[2] = PyLong_FromSsize_t(remote);
    v[3] = remote > 0 ? rr_site(base, len, remote) : Py_NewRef(Py_None);
    return an_pack(NULL, v, 4);

error:
    Py_XDECREF(plain);
    Py_XDECREF(other);
    return NULL;
}

PyDoc_STRVAR(refs_doc,
"refs(data, limits=None, /) -> (plain, other, remote, site)\n"
"\n"
"analyze()'s walk with a lean result: plain, the 8-byte oids of the\n"
"record's oid / oid_class references concatenated; other, None or a list of\n"
"(kind, oid, database) for every other reference with a known oid; remote,\n"
"-1 when no global names pclasses.tree.reference.RemoteReference, else the\n"
"offset a walk for remote references may start from; site, None or\n"
"(oid, klass, database, via) of the record's one remote reference when it\n"
"is written as ZODB's pickler writes it (see\n"
"pclasses.record.remote.single_remote_site).  Same errors as analyze.");

static PyObject *
skim_refs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    an_state st;
    PyObject *result, *arg;
    Py_buffer view;
    const unsigned char *base;
    Py_ssize_t len;
    int have_view = 0;
    int64_t limits[4];

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError,
                        "refs(data, limits=None) takes 1 or 2 arguments");
        return NULL;
    }
    arg = args[0];
    memcpy(limits, ms->limits, sizeof limits);
    if (nargs == 2 && args[1] != Py_None &&
        an_parse_limits(args[1], limits) < 0)
        return NULL;
    have_view = an_buffer(arg, &view, &base, &len);
    if (have_view < 0)
        return NULL;
    an_run(&st, limits, base, len, have_view);
    if (st.r.status != SKIM_OK)
        result = an_error(&st, len);
    else
        result = refs_result(ms, &st, base, len);
    an_free(&st);
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------
 * export_refs(data, marker): analyze's walk with what export's walk needs
 * from an ordinary record (pclasses.transfer.export; added for issue 16's
 * RelStorage export target).  Same errors and limits as analyze; None for
 * any record export reads through analyze() instead.
 * ------------------------------------------------------------------------ */

/* Whether the n bytes at b hold the m bytes at w. */
static int
xr_contains(const unsigned char *b, Py_ssize_t n, const char *w, Py_ssize_t m)
{
    const unsigned char *p = b, *end;
    if (m <= 0)
        return 0;
    if (m > n)
        return 0;
    end = b + n - m;
    while (p <= end) {
        p = memchr(p, (unsigned char)w[0], (size_t)(end - p + 1));
        if (p == NULL)
            return 0;
        if (memcmp(p, w, (size_t)m) == 0)
            return 1;
        p++;
    }
    return 0;
}

PyDoc_STRVAR(export_refs_doc,
"export_refs(data, marker, /) -> ((klass, names), oids) or None\n"
"\n"
"analyze()'s walk (same limits, same ValueError) with what export needs\n"
"from an ordinary record: klass and names as census(data) gives them, and\n"
"oids, a tuple of the ints of the record's 8-byte oid / oid_class\n"
"references in byte order (weak references and references of other\n"
"lengths left out).  None, for the caller to read the record through\n"
"analyze(), when data contains the bytes marker, when a global's names are\n"
"not literals, when no global is the record's class metadata, or when a\n"
"reference is anything but an oid, oid_class or weak reference of this\n"
"database with a known oid.");

static PyObject *
skim_export_refs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    an_state st;
    PyObject *result = NULL, *klass = NULL, *names = NULL, *sig = NULL, *oids = NULL;
    Py_buffer view;
    const unsigned char *base;
    Py_ssize_t len, nnames = 0, k = 0, meta = -1, noids = 0;
    int have_view;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "export_refs(data, marker) takes 2 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "export_refs: marker must be bytes");
        return NULL;
    }
    have_view = an_buffer(args[0], &view, &base, &len);
    if (have_view < 0)
        return NULL;
    if (xr_contains(base, len, PyBytes_AS_STRING(args[1]),
                    PyBytes_GET_SIZE(args[1]))) {
        if (have_view)
            PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    an_run(&st, ms->limits, base, len, have_view);
    if (st.r.status != SKIM_OK) {
        result = an_error(&st, len);
        goto done;
    }
    for (Py_ssize_t i = 0; i < st.nglobals; i++) {
        const an_global *g = &st.globals[i];
        long uses;
        if (g->moff < 0 || g->noff < 0)
            goto other;
        uses = g->item < 0 ? USE_INSTANTIATE : st.items[g->item].bits;
        if (meta < 0 && (uses & USE_CLASS_META))
            meta = i;
        else
            nnames++;
    }
    if (meta < 0)
        goto other;
    for (Py_ssize_t i = 0; i < st.npids; i++) {
        const an_pid *rec = &st.pids[i];
        if (rec->oid_off < 0 || rec->d >= 0)
            goto other;
        if (rec->kind == PK_OID || rec->kind == PK_OID_CLASS) {
            if (rec->oid_len == 8)
                noids++;
        }
        else if (rec->kind != PK_WEAK)
            goto other;
    }
    klass = an_pair_cached(ms, base, &st.globals[meta]);
    if (klass == NULL)
        goto done;
    names = PyTuple_New(nnames);
    if (names == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < st.nglobals && k < nnames; i++) {
        PyObject *t;
        if (i == meta)
            continue;
        t = an_pair_cached(ms, base, &st.globals[i]);
        if (t == NULL)
            goto done;
        PyTuple_SET_ITEM(names, k++, t);
    }
    sig = PyTuple_Pack(2, klass, names);
    if (sig == NULL)
        goto done;
    oids = PyTuple_New(noids);
    if (oids == NULL)
        goto done;
    k = 0;
    for (Py_ssize_t i = 0; i < st.npids && k < noids; i++) {
        const an_pid *rec = &st.pids[i];
        const unsigned char *o = base + rec->oid_off;
        uint64_t v = 0;
        PyObject *n;
        if ((rec->kind != PK_OID && rec->kind != PK_OID_CLASS) || rec->oid_len != 8)
            continue;
        for (int j = 0; j < 8; j++)
            v = v << 8 | o[j];
        n = PyLong_FromUnsignedLongLong(v);
        if (n == NULL)
            goto done;
        PyTuple_SET_ITEM(oids, k++, n);
    }
    result = PyTuple_Pack(2, sig, oids);
    goto done;
other:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(klass);
    Py_XDECREF(names);
    Py_XDECREF(sig);
    Py_XDECREF(oids);
    an_free(&st);
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

static PyMethodDef skim_methods[] = {
    {"skim", (PyCFunction)skim_skim, METH_O, skim_doc},
    {"census", (PyCFunction)skim_census, METH_O, census_doc},
    {"rename", (PyCFunction)(void (*)(void))skim_rename, METH_FASTCALL, rename_doc},
    {"analyze", (PyCFunction)(void (*)(void))skim_analyze, METH_FASTCALL,
     analyze_doc},
    {"refs", (PyCFunction)(void (*)(void))skim_refs, METH_FASTCALL, refs_doc},
    {"export_refs", (PyCFunction)(void (*)(void))skim_export_refs, METH_FASTCALL,
     export_refs_doc},
    {"_set_default_limits", (PyCFunction)skim_set_default_limits, METH_O,
     "_set_default_limits(limits): the limits analyze() uses by default."},
    {"_set_types", (PyCFunction)skim_set_types, METH_VARARGS,
     "_set_types(Analysis, GlobalSite, PidSite, Use, kinds): the types\n"
     "analyze() returns (NamedTuples, the Use flag type, the EdgeKind\n"
     "members in the C order of reference kinds)."},
    {NULL, NULL, 0, NULL}
};

static int
skim_exec(PyObject *module)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    ms->limits[0] = 1000;
    ms->limits[1] = 5000000;
    ms->limits[2] = (int64_t)1 << 24;
    ms->limits[3] = 64;
    for (int i = 0; i < PK_COUNT; i++) {
        ms->pk_str[i] = PyUnicode_InternFromString(pk_names[i]);
        if (ms->pk_str[i] == NULL)
            return -1;
    }
    ms->op_global = PyUnicode_InternFromString("global");
    ms->op_inst = PyUnicode_InternFromString("inst");
    ms->op_stack_global = PyUnicode_InternFromString("stack_global");
    if (ms->op_global == NULL || ms->op_inst == NULL ||
        ms->op_stack_global == NULL)
        return -1;
    return 0;
}

static int
skim_traverse(PyObject *module, visitproc visit, void *arg)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    if (ms == NULL)
        return 0;
    Py_VISIT(ms->analysis_type);
    Py_VISIT(ms->global_type);
    Py_VISIT(ms->pid_type);
    Py_VISIT(ms->use_type);
    for (int i = 0; i < USE_CACHE; i++)
        Py_VISIT(ms->use_cache[i]);
    for (int i = 0; i < PK_COUNT; i++)
        Py_VISIT(ms->pk_str[i]);
    for (int i = 0; i < PAIR_CACHE; i++)
        Py_VISIT(ms->pairs[i].pair);
    return 0;
}

static int
skim_clear(PyObject *module)
{
    skim_state *ms = (skim_state *)PyModule_GetState(module);
    if (ms == NULL)
        return 0;
    an_clear_types(ms);
    for (int i = 0; i < PK_COUNT; i++)
        Py_CLEAR(ms->pk_str[i]);
    Py_CLEAR(ms->op_global);
    Py_CLEAR(ms->op_inst);
    Py_CLEAR(ms->op_stack_global);
    for (int i = 0; i < PAIR_CACHE; i++) {
        Py_CLEAR(ms->pairs[i].pair);
        Py_CLEAR(ms->pairs[i].raw);
    }
    return 0;
}

static void
skim_free(void *module)
{
    (void)skim_clear((PyObject *)module);
}

static PyModuleDef_Slot skim_slots[] = {
    {Py_mod_exec, skim_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL}
};

static struct PyModuleDef skim_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pclasses.record._skim",
    .m_doc = "C pre-scan of ZODB record opcode streams (see pclasses.record.analyze).",
    .m_size = sizeof(skim_state),
    .m_methods = skim_methods,
    .m_slots = skim_slots,
    .m_traverse = skim_traverse,
    .m_clear = skim_clear,
    .m_free = skim_free,
};

PyMODINIT_FUNC
PyInit__skim(void)
{
    return PyModuleDef_Init(&skim_module);
}
