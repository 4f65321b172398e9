/*
 * vproxy.net._relay: one relay step of a socket-mode connection in one call.
 *
 * relay(src_fd, dst_fd, window[, flags]) reads what src_fd has into the writable
 * buffer `window` and writes it to dst_fd, releasing the interpreter lock once for
 * both system calls. With flags (send(2) flags, e.g. MSG_MORE when the source's FIN
 * has arrived and a shutdown of dst_fd follows: the bytes then leave with the FIN
 * in one segment) the write is a send(2). Python's own calls (recv_into, then os.write) release and retake it
 * around each, and parse their arguments each time: about a third of the user-space
 * work of a keep-alive request (docs/performance.md).
 *
 * Returns:
 *   n > 0        n bytes read and all of them written
 *   0            end of stream (the peer's FIN)
 *   -1           nothing to read (EAGAIN): wait for the next event
 *   <= -2        a short write: with c = -result - 2, n = c & 0xFFFFFFFF bytes were
 *                read and c >> 32 of them written (0 when the peer's buffer is full)
 * Raises OSError for an error of either call (its errno; the read is retried on
 * EINTR, the write too). One write only: a second one after a short write would
 * almost always find the buffer still full.
 *
 * Optional: without a C compiler the package uses recv_into and os.write
 * (vproxy.net.connection).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static int
fd_arg(PyObject *arg, const char *what, int *out)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0 || v > 0x7fffffffL) {
        PyErr_Format(PyExc_ValueError, "relay: %s must be a file descriptor, not %ld", what, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *
relay(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int src, dst, flags = 0;
    Py_buffer view;
    ssize_t n, sent = 0;
    int read_errno = 0, write_errno = 0;

    (void)module;
    if (nargs != 3 && nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "relay(src_fd, dst_fd, window[, flags]) takes 3 or 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (fd_arg(args[0], "src_fd", &src) < 0 || fd_arg(args[1], "dst_fd", &dst) < 0) {
        return NULL;
    }
    if (nargs == 4) {
        long f = PyLong_AsLong(args[3]);
        if (f == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (f < 0 || f > 0x7fffffffL) {
            PyErr_Format(PyExc_ValueError, "relay: bad send flags %ld", f);
            return NULL;
        }
        flags = (int)f;
    }
    if (PyObject_GetBuffer(args[2], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (view.len > 0xffffffffL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "relay: the window is larger than 4 GiB");
        return NULL;
    }

    Py_BEGIN_ALLOW_THREADS
    do {
        n = read(src, view.buf, (size_t)view.len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        read_errno = errno;
    }
    else if (n > 0) {
        ssize_t w;
        do {
            w = flags ? send(dst, view.buf, (size_t)n, flags) : write(dst, view.buf, (size_t)n);
        } while (w < 0 && errno == EINTR);
        if (w >= 0) {
            sent = w;
        }
        else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            write_errno = errno;
        }
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&view);
    if (read_errno) {
        if (read_errno == EAGAIN || read_errno == EWOULDBLOCK) {
            return PyLong_FromLong(-1);
        }
        errno = read_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (write_errno) {
        errno = write_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (sent == n) {
        return PyLong_FromSsize_t(n);
    }
    return PyLong_FromLongLong(-((long long)n + ((long long)sent << 32)) - 2);
}

static PyMethodDef relay_methods[] = {
    {"relay", (PyCFunction)(void (*)(void))relay, METH_FASTCALL,
     "relay(src_fd, dst_fd, window[, flags]) -> int: read src_fd into window, write it to "
     "dst_fd (send(2) with flags when given)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    "vproxy.net._relay",
    "One relay step (read, then write) with the interpreter lock released once.",
    -1,
    relay_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    return PyModule_Create(&relay_module);
}
