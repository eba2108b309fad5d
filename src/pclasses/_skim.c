/* pclasses._skim: a C-speed pre-scan of a ZODB record's opcode stream.
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
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
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

#if PY_VERSION_HEX < 0x030A0000
#error "pclasses._skim needs Python 3.10 or newer"
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

static PyMethodDef skim_methods[] = {
    {"skim", (PyCFunction)skim_skim, METH_O, skim_doc},
    {NULL, NULL, 0, NULL}
};

static PyModuleDef_Slot skim_slots[] = {
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
    .m_name = "pclasses._skim",
    .m_doc = "C pre-scan of ZODB record opcode streams (see pclasses.skim).",
    .m_size = 0,
    .m_methods = skim_methods,
    .m_slots = skim_slots,
};

PyMODINIT_FUNC
PyInit__skim(void)
{
    return PyModuleDef_Init(&skim_module);
}
