/* tun.node: the smallest native piece of tunproxy. Opens a TUN device, reads
 * and writes batches of packets into one shared buffer with one N-API call per
 * batch, and reports readiness through a uv_poll_t on the main libuv loop (no
 * thread pool). All packet logic lives in TypeScript (dataplane/tun/index.ts).
 *
 *   open(name, flags)                      -> { fd, name }   flags: IFF_MULTI_QUEUE | IFF_VNET_HDR
 *   readBatch(fd, buf, slotSize, max, lengths: Uint32Array) -> count (0 when nothing is queued)
 *   readPacked(fd, buf, max, minSlot, reserve, offsets, lengths) -> count: packets one after another
 *                                          (each start 64-aligned, at least minSlot apart) while reserve bytes remain
 *   writeBatch(fd, buf, offsets, lengths, count)            -> packets consumed (< count only on EAGAIN)
 *   poll(fd, cb), stopPoll(fd), close(fd), stats(fd), setOffload(fd, flags), persist(fd, on)
 *
 * Handing the open TUN file from one process to another (tunproxy tun-holder
 * keeps it while tunproxy run restarts, so packets wait in the device queue):
 *   sendFd(sockFd, fd)                     -> the peer's pid (SO_PEERCRED) or -1; one byte + SCM_RIGHTS
 *   recvFd(sockFd, timeoutMs)              -> the fd received (close-on-exec), from a connected AF_UNIX socket
 *   fetchFd(path, timeoutMs)               -> connect to the Unix socket at path, recvFd, close the socket
 *   adopt(fd)                              -> { fd, name, flags, sameNetns }: a TUN fd got from elsewhere,
 *                                             checked (TUNGETIFF) and registered like one open() made
 *   info(fd)                               -> { name, flags } (TUNGETIFF; EBADFD once the device is deleted)
 *
 * With IFF_VNET_HDR every packet starts with a struct virtio_net_hdr (10
 * bytes): it is read into the start of the slot and written from the offset
 * given, so switching it on changes where JS finds the IP header, not the
 * calls. Errors on the hot path are counted (per errno), not thrown. */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <net/if.h>
#include <linux/if_tun.h>

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20 /* Linux 6.2: I can handle USO for IPv4 packets */
#define TUN_F_USO6 0x40
#endif

#define ERRNO_SLOTS 134
#define SCRATCH (65536 + 256) /* catches the rest of a packet larger than its slot */

typedef struct {
  uv_poll_t handle; /* first member: the handle's address is the struct's */
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
} tun_poll;

typedef struct {
  int fd;
  tun_poll *poll;
  double rx_packets, rx_bytes, rx_truncated, rx_errors, tx_packets, tx_bytes, tx_eagain, tx_errors;
  double tx_errno[ERRNO_SLOTS];
} tun_entry;

typedef struct {
  uv_loop_t *loop;
  tun_entry **by_fd; /* indexed by fd; NULL when the fd is not a TUN fd opened here */
  int cap;
  unsigned char scratch[SCRATCH];
} tun_state;

#define CHECK(call) do { if ((call) != napi_ok) return NULL; } while (0)
#define INT_ARG(v, out, what) do { if (napi_get_value_int32(env, (v), (out)) != napi_ok) \
    return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what " must be a number"), NULL; } while (0)

static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *msg) {
  const char *name = strerrorname_np(err);
  napi_value code, text, error, num, sc;
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_create_int32(env, err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, error, "syscall", sc);
  napi_throw(env, error);
  return NULL;
}

static tun_state *state_of(napi_env env) {
  void *d = NULL;
  napi_get_instance_data(env, &d);
  return d;
}

static tun_entry *entry_of(napi_env env, tun_state *s, int fd) {
  if (fd >= 0 && fd < s->cap && s->by_fd[fd]) return s->by_fd[fd];
  char msg[128];
  snprintf(msg, sizeof msg, "fd %d is not an open TUN device of this addon (closed already, or never opened with open())", fd);
  napi_throw_type_error(env, "EBADF", msg);
  return NULL;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) { napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments"); return 0; }
  return 1;
}

/* a Uint8Array/Buffer (elem 1) or Uint32Array (elem 4): data pointer and element count */
static void *typed(napi_env env, napi_value v, napi_typedarray_type want, size_t *len, const char *what) {
  napi_typedarray_type type; void *data = NULL; napi_value ab; size_t off;
  bool is = false;
  napi_is_typedarray(env, v, &is);
  if (is && napi_get_typedarray_info(env, v, &type, len, &data, &ab, &off) == napi_ok && type == want) return data;
  char msg[96];
  snprintf(msg, sizeof msg, "%s must be a %s", what, want == napi_uint8_array ? "Uint8Array or Buffer" : "Uint32Array");
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

/* enter fd in the table of TUN fds this addon reads and writes; throws (returns 0) when out of memory */
static int register_fd(napi_env env, int fd, const char *syscall) {
  tun_state *s = state_of(env);
  if (fd >= s->cap) {
    int cap = s->cap ? s->cap : 64;
    while (cap <= fd) cap *= 2;
    tun_entry **n = realloc(s->by_fd, cap * sizeof *n);
    if (!n) { throw_errno(env, ENOMEM, syscall, "out of memory for the fd table"); return 0; }
    memset(n + s->cap, 0, (cap - s->cap) * sizeof *n);
    s->by_fd = n; s->cap = cap;
  }
  tun_entry *e = calloc(1, sizeof *e);
  if (!e) { throw_errno(env, ENOMEM, syscall, "out of memory"); return 0; }
  e->fd = fd; s->by_fd[fd] = e;
  return 1;
}

static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[2], out, v;
  if (!get_args(env, info, 2, argv)) return NULL;
  char name[64]; size_t nlen = 0; int32_t flags = 0; char msg[512];
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok || napi_get_value_int32(env, argv[1], &flags) != napi_ok)
    return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "open(name: string, flags: number)"), NULL;
  if (nlen >= IFNAMSIZ) {
    snprintf(msg, sizeof msg, "TUN device name \"%s\" is %zu bytes; Linux interface names are at most %d bytes — choose a shorter name", name, nlen, IFNAMSIZ - 1);
    return throw_errno(env, ENAMETOOLONG, "open", msg);
  }
  if (flags & ~(IFF_MULTI_QUEUE | IFF_VNET_HDR))
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "open flags may only hold IFF_MULTI_QUEUE and IFF_VNET_HDR"), NULL;
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno; const char *why =
      e == ENOENT || e == ENODEV || e == ENXIO ? "the tun module is not loaded or /dev/net/tun is missing (modprobe tun; mknod /dev/net/tun c 10 200)" :
      e == EACCES || e == EPERM ? "permission denied: run as root (CAP_NET_ADMIN) with read/write access to /dev/net/tun" :
      e == EMFILE || e == ENFILE ? "too many open files: close some or raise the limit (ulimit -n)" : strerror(e);
    snprintf(msg, sizeof msg, "opening /dev/net/tun failed: %s — %s", strerrorname_np(e), why);
    return throw_errno(env, e, "open", msg);
  }
  struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | flags;
  memcpy(ifr.ifr_name, name, nlen);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno; const char *why =
      e == EPERM ? "CAP_NET_ADMIN is needed to create or attach a TUN device (run as root), or the persistent device belongs to another user or group" :
      e == EBUSY ? "the device is already attached to another file descriptor: close that one, or create the device with multi_queue (ip tuntap add dev NAME mode tun multi_queue) and open every queue with multiQueue" :
      e == EINVAL ? "the name is not a valid interface name, or the existing device does not match (multi_queue on one side only, a TAP or a non-TUN interface of that name): recreate it with matching flags or choose another name" :
      strerror(e);
    snprintf(msg, sizeof msg, "attaching to TUN device \"%s\" failed: %s — %s", name, strerrorname_np(e), why);
    close(fd);
    return throw_errno(env, e, "ioctl(TUNSETIFF)", msg);
  }
  if (!register_fd(env, fd, "open")) { close(fd); return NULL; }
  CHECK(napi_create_object(env, &out));
  napi_create_int32(env, fd, &v); napi_set_named_property(env, out, "fd", v);
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &v); napi_set_named_property(env, out, "name", v);
  return out;
}

static napi_value js_read_batch(napi_env env, napi_callback_info info) {
  napi_value argv[5], out; int32_t fd, slot, max; size_t blen, llen;
  if (!get_args(env, info, 5, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  INT_ARG(argv[2], &slot, "slotSize");
  INT_ARG(argv[3], &max, "maxPackets");
  unsigned char *buf = typed(env, argv[1], napi_uint8_array, &blen, "buf"); if (!buf) return NULL;
  uint32_t *lengths = typed(env, argv[4], napi_uint32_array, &llen, "lengths"); if (!lengths) return NULL;
  if (slot <= 0 || max < 0 || (size_t)max > llen || (size_t)slot * (size_t)max > blen)
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "readBatch: need slotSize > 0, maxPackets <= lengths.length and slotSize * maxPackets <= buf.byteLength"), NULL;
  tun_state *s = state_of(env);
  tun_entry *e = entry_of(env, s, fd); if (!e) return NULL;
  int count = 0, err = 0;
  for (int tries = 0; tries < max && count < max; tries++) {
    struct iovec iov[2] = { { buf + (size_t)count * slot, (size_t)slot }, { s->scratch, SCRATCH } };
    ssize_t n = readv(fd, iov, 2);
    if (n < 0) {
      if (errno == EINTR) { tries--; continue; }
      if (errno != EAGAIN) { err = errno; e->rx_errors++; }
      break;
    }
    if (n > slot) { e->rx_truncated++; continue; } /* never hand a partial packet over */
    lengths[count++] = (uint32_t)n;
    e->rx_packets++; e->rx_bytes += n;
  }
  if (err && count == 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "reading the TUN device failed: %s (%s) — the device may have been deleted", strerrorname_np(err), strerror(err));
    return throw_errno(env, err, "read", msg);
  }
  napi_create_int32(env, count, &out);
  return out;
}

static napi_value js_read_packed(napi_env env, napi_callback_info info) {
  napi_value argv[7], out; int32_t fd, max, min_slot, reserve; size_t blen, olen, llen;
  if (!get_args(env, info, 7, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  INT_ARG(argv[2], &max, "maxPackets");
  INT_ARG(argv[3], &min_slot, "minSlot");
  INT_ARG(argv[4], &reserve, "reserve");
  unsigned char *buf = typed(env, argv[1], napi_uint8_array, &blen, "buf"); if (!buf) return NULL;
  uint32_t *offsets = typed(env, argv[5], napi_uint32_array, &olen, "offsets"); if (!offsets) return NULL;
  uint32_t *lengths = typed(env, argv[6], napi_uint32_array, &llen, "lengths"); if (!lengths) return NULL;
  if (max < 0 || (size_t)max > olen || (size_t)max > llen || min_slot < 1 || reserve < 1 || (size_t)reserve > blen)
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "readPacked: need maxPackets <= offsets.length and lengths.length, minSlot >= 1, 1 <= reserve <= buf.byteLength"), NULL;
  tun_state *s = state_of(env);
  tun_entry *e = entry_of(env, s, fd); if (!e) return NULL;
  int count = 0, err = 0; size_t cur = 0;
  while (count < max && blen - cur >= (size_t)reserve) {
    struct iovec iov[2] = { { buf + cur, blen - cur }, { s->scratch, SCRATCH } };
    ssize_t n = readv(fd, iov, 2);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) { err = errno; e->rx_errors++; }
      break;
    }
    if ((size_t)n > blen - cur) { e->rx_truncated++; continue; } /* never hand a partial packet over */
    offsets[count] = (uint32_t)cur;
    lengths[count++] = (uint32_t)n;
    e->rx_packets++; e->rx_bytes += n;
    size_t step = (size_t)n < (size_t)min_slot ? (size_t)min_slot : (size_t)n;
    cur += (step + 63) & ~(size_t)63;
    if (cur > blen) cur = blen;
  }
  if (err && count == 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "reading the TUN device failed: %s (%s) — the device may have been deleted", strerrorname_np(err), strerror(err));
    return throw_errno(env, err, "read", msg);
  }
  napi_create_int32(env, count, &out);
  return out;
}

static napi_value js_write_batch(napi_env env, napi_callback_info info) {
  napi_value argv[5], out; int32_t fd, count; size_t blen, olen, llen;
  if (!get_args(env, info, 5, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  INT_ARG(argv[4], &count, "count");
  unsigned char *buf = typed(env, argv[1], napi_uint8_array, &blen, "buf"); if (!buf) return NULL;
  uint32_t *offsets = typed(env, argv[2], napi_uint32_array, &olen, "offsets"); if (!offsets) return NULL;
  uint32_t *lengths = typed(env, argv[3], napi_uint32_array, &llen, "lengths"); if (!lengths) return NULL;
  if (count < 0 || (size_t)count > olen || (size_t)count > llen)
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "writeBatch: count must be >= 0 and <= offsets.length and lengths.length"), NULL;
  for (int i = 0; i < count; i++)
    if ((uint64_t)offsets[i] + lengths[i] > blen)
      return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "writeBatch: a packet's offset + length lies beyond buf"), NULL;
  tun_entry *e = entry_of(env, state_of(env), fd); if (!e) return NULL;
  int i = 0;
  while (i < count) {
    ssize_t n = write(fd, buf + offsets[i], lengths[i]);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { e->tx_eagain++; break; }
      e->tx_errors++;
      if (errno < ERRNO_SLOTS) e->tx_errno[errno]++;
    } else { e->tx_packets++; e->tx_bytes += n; }
    i++;
  }
  napi_create_int32(env, i, &out);
  return out;
}

static void on_poll_closed(uv_handle_t *h) { free(h); }

static void poll_stop(napi_env env, tun_entry *e, int in_js) {
  tun_poll *p = e->poll;
  if (!p) return;
  e->poll = NULL;
  uv_poll_stop(&p->handle);
  if (in_js) { napi_delete_reference(env, p->cb); napi_async_destroy(env, p->actx); }
  uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  tun_poll *p = (tun_poll *)h;
  napi_env env = p->env;
  napi_handle_scope scope; napi_value cb, recv, arg, result, code, text;
  (void)events;
  napi_open_handle_scope(env, &scope);
  napi_get_reference_value(env, p->cb, &cb);
  napi_get_global(env, &recv); /* MakeCallback needs an object receiver */
  if (status < 0) {
    napi_create_string_utf8(env, uv_err_name(status), NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, uv_strerror(status), NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, code, text, &arg);
  } else napi_get_null(env, &arg);
  if (napi_make_callback(env, p->actx, recv, cb, 1, &arg, &result) == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
  napi_close_handle_scope(env, scope);
}

static napi_value js_poll(napi_env env, napi_callback_info info) {
  napi_value argv[2], name; int32_t fd; napi_valuetype t;
  if (!get_args(env, info, 2, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "poll(fd, callback): callback must be a function"), NULL;
  tun_state *s = state_of(env);
  tun_entry *e = entry_of(env, s, fd); if (!e) return NULL;
  poll_stop(env, e, 1); /* a second poll() replaces the callback */
  tun_poll *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, ENOMEM, "poll", "out of memory");
  int r = uv_poll_init(s->loop, &p->handle, fd);
  if (r < 0) { free(p); return throw_errno(env, -r, "uv_poll_init", uv_strerror(r)); }
  p->env = env;
  napi_create_reference(env, argv[1], 1, &p->cb);
  napi_create_string_utf8(env, "TunPoll", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &p->actx);
  e->poll = p;
  uv_poll_start(&p->handle, UV_READABLE, on_poll);
  return NULL;
}

static napi_value js_stop_poll(napi_env env, napi_callback_info info) {
  napi_value argv[1]; int32_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  tun_state *s = state_of(env);
  if (fd >= 0 && fd < s->cap && s->by_fd[fd]) poll_stop(env, s->by_fd[fd], 1);
  return NULL;
}

/* close(fd): stops polling and closes; returns false when the fd was not open here (idempotent) */
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1], out; int32_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  tun_state *s = state_of(env);
  bool was = fd >= 0 && fd < s->cap && s->by_fd[fd];
  if (was) {
    poll_stop(env, s->by_fd[fd], 1);
    free(s->by_fd[fd]); s->by_fd[fd] = NULL;
    close(fd);
  }
  napi_get_boolean(env, was, &out);
  return out;
}

static void set_num(napi_env env, napi_value o, const char *k, double n) {
  napi_value v; napi_create_double(env, n, &v); napi_set_named_property(env, o, k, v);
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[1], out, per; int32_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  tun_entry *e = entry_of(env, state_of(env), fd); if (!e) return NULL;
  napi_create_object(env, &out); napi_create_object(env, &per);
  set_num(env, out, "rxPackets", e->rx_packets); set_num(env, out, "rxBytes", e->rx_bytes);
  set_num(env, out, "rxTruncated", e->rx_truncated); set_num(env, out, "rxErrors", e->rx_errors);
  set_num(env, out, "txPackets", e->tx_packets); set_num(env, out, "txBytes", e->tx_bytes);
  set_num(env, out, "txAgain", e->tx_eagain); set_num(env, out, "txErrors", e->tx_errors);
  for (int i = 0; i < ERRNO_SLOTS; i++)
    if (e->tx_errno[i]) { const char *n = strerrorname_np(i); set_num(env, per, n ? n : "EUNKNOWN", e->tx_errno[i]); }
  napi_set_named_property(env, out, "txErrno", per);
  return out;
}

static napi_value js_set_offload(napi_env env, napi_callback_info info) {
  napi_value argv[2]; int32_t fd, flags;
  if (!get_args(env, info, 2, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  INT_ARG(argv[1], &flags, "flags");
  if (!entry_of(env, state_of(env), fd)) return NULL;
  if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "TUNSETOFFLOAD failed: %s — offloads need a device opened with vnetHdr", strerrorname_np(errno));
    return throw_errno(env, errno, "ioctl(TUNSETOFFLOAD)", msg);
  }
  return NULL;
}

/* persist(fd, on): TUNSETPERSIST — the device outlives the fd (on) or goes with the last one (off) */
static napi_value js_persist(napi_env env, napi_callback_info info) {
  napi_value argv[2]; int32_t fd; bool on = false;
  if (!get_args(env, info, 2, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  if (napi_get_value_bool(env, argv[1], &on) != napi_ok)
    return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "persist(fd, on): on must be a boolean"), NULL;
  if (!entry_of(env, state_of(env), fd)) return NULL;
  if (ioctl(fd, TUNSETPERSIST, (unsigned long)(on ? 1 : 0)) < 0) {
    char msg[200]; int e = errno;
    snprintf(msg, sizeof msg, "TUNSETPERSIST %s failed: %s — %s", on ? "on" : "off", strerrorname_np(e),
             e == EPERM ? "CAP_NET_ADMIN is needed" : strerror(e));
    return throw_errno(env, e, "ioctl(TUNSETPERSIST)", msg);
  }
  return NULL;
}

/* ---- passing the TUN file between processes (SCM_RIGHTS over AF_UNIX) ---- */

static double now_ms(void) {
  struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* wait until fd has `events` or timeout_ms passed; 0 ready, else an errno (ETIMEDOUT, ...) */
static int wait_fd(int fd, short events, int timeout_ms) {
  double deadline = now_ms() + timeout_ms;
  for (;;) {
    int left = (int)(deadline - now_ms());
    if (left < 0) left = 0;
    struct pollfd p = { fd, events, 0 };
    int r = poll(&p, 1, left);
    if (r > 0) return 0;
    if (r == 0) return ETIMEDOUT;
    if (errno != EINTR) return errno;
  }
}

/* one byte of data (a stream needs some) with the fd as SCM_RIGHTS; 0 or an errno */
static int send_fd(int sock, int fd, int timeout_ms) {
  char byte = 'T';
  struct iovec iov = { &byte, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr m = { 0 };
  m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = ctl.buf; m.msg_controllen = sizeof ctl.buf;
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  for (;;) {
    ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
    if (n == 1) return 0;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) { int w = wait_fd(sock, POLLOUT, timeout_ms); if (w) return w; continue; }
    return n < 0 ? errno : EIO;
  }
}

/* the fd the peer sent (close-on-exec) into *out; 0 or an errno (EPROTO: an answer without an fd) */
static int recv_fd(int sock, int timeout_ms, int *out) {
  char byte;
  struct iovec iov = { &byte, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int) * 4)]; } ctl;
  struct msghdr m;
  for (;;) {
    memset(&m, 0, sizeof m); memset(&ctl, 0, sizeof ctl);
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = ctl.buf; m.msg_controllen = sizeof ctl.buf;
    ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) { int w = wait_fd(sock, POLLIN, timeout_ms); if (w) return w; continue; }
    if (n < 0) return errno;
    break;
  }
  int got = -1, extra = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k; i++) {
      int f; memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (got < 0) got = f; else { close(f); extra++; } /* one fd is the protocol: more are closed */
    }
  }
  if (got < 0) return (m.msg_flags & MSG_CTRUNC) ? EMSGSIZE : EPROTO;
  (void)extra;
  *out = got;
  return 0;
}

/* sendFd(sockFd, fd) -> the peer's pid (SO_PEERCRED), or -1 when the socket does not say */
static napi_value js_send_fd(napi_env env, napi_callback_info info) {
  napi_value argv[2], out; int32_t sock, fd;
  if (!get_args(env, info, 2, argv)) return NULL;
  INT_ARG(argv[0], &sock, "sockFd");
  INT_ARG(argv[1], &fd, "fd");
  int e = send_fd(sock, fd, 2000);
  if (e) {
    char msg[200];
    snprintf(msg, sizeof msg, "sending fd %d over socket fd %d failed: %s (%s)", fd, sock, strerrorname_np(e), strerror(e));
    return throw_errno(env, e, "sendmsg", msg);
  }
  struct ucred cr; socklen_t len = sizeof cr;
  int pid = getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 ? (int)cr.pid : -1;
  napi_create_int32(env, pid, &out);
  return out;
}

/* recvFd(sockFd, timeoutMs) -> the fd received */
static napi_value js_recv_fd(napi_env env, napi_callback_info info) {
  napi_value argv[2], out; int32_t sock, timeout; int fd = -1;
  if (!get_args(env, info, 2, argv)) return NULL;
  INT_ARG(argv[0], &sock, "sockFd");
  INT_ARG(argv[1], &timeout, "timeoutMs");
  int e = recv_fd(sock, timeout < 0 ? 0 : timeout, &fd);
  if (e) {
    char msg[200];
    snprintf(msg, sizeof msg, "receiving an fd over socket fd %d failed: %s (%s)", sock, strerrorname_np(e),
             e == EPROTO ? "the peer answered without an fd" : strerror(e));
    return throw_errno(env, e, "recvmsg", msg);
  }
  napi_create_int32(env, fd, &out);
  return out;
}

/* fetchFd(path, timeoutMs) -> connect to the AF_UNIX stream socket at path, take the one fd it sends */
static napi_value js_fetch_fd(napi_env env, napi_callback_info info) {
  napi_value argv[2], out; int32_t timeout; char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; size_t plen = 0;
  char msg[600];
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &plen) != napi_ok)
    return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fetchFd(path: string, timeoutMs: number)"), NULL;
  INT_ARG(argv[1], &timeout, "timeoutMs");
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
  if (plen == 0 || plen >= sizeof a.sun_path) {
    snprintf(msg, sizeof msg, "the socket path \"%s\" must be 1 to %zu bytes", path, sizeof a.sun_path - 1);
    return throw_errno(env, ENAMETOOLONG, "connect", msg);
  }
  memcpy(a.sun_path, path, plen);
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) { int e = errno; snprintf(msg, sizeof msg, "socket(AF_UNIX) failed: %s", strerrorname_np(e)); return throw_errno(env, e, "socket", msg); }
  int r;
  do r = connect(sock, (struct sockaddr *)&a, sizeof a); while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno; close(sock);
    snprintf(msg, sizeof msg, "connecting to %s failed: %s — %s", path, strerrorname_np(e),
             e == ENOENT ? "no such socket: is the holder running, with this --socket?" :
             e == ECONNREFUSED ? "nobody listens there (a holder that died left its socket)" :
             e == EACCES || e == EPERM ? "permission denied: the socket is the holder's user's only (mode 0600)" :
             e == ENOTSOCK ? "that path is not a socket" : strerror(e));
    return throw_errno(env, e, "connect", msg);
  }
  int fd = -1;
  int e = recv_fd(sock, timeout < 0 ? 0 : timeout, &fd);
  close(sock);
  if (e) {
    snprintf(msg, sizeof msg, "no fd from %s: %s — %s", path, strerrorname_np(e),
             e == ETIMEDOUT ? "the peer sent nothing in time" : e == EPROTO ? "the peer closed or answered without an fd (not a tun-holder, or its device is gone: see its log)" : strerror(e));
    return throw_errno(env, e, "recvmsg", msg);
  }
  napi_create_int32(env, fd, &out);
  return out;
}

/* info(fd) -> { name, flags }: TUNGETIFF on an fd of this addon; throws EBADFD once the device is deleted */
static napi_value js_info(napi_env env, napi_callback_info info) {
  napi_value argv[1], out, v; int32_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  if (!entry_of(env, state_of(env), fd)) return NULL;
  struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
    int e = errno; char msg[200];
    snprintf(msg, sizeof msg, "TUNGETIFF failed: %s — %s", strerrorname_np(e), e == EBADFD ? "the device was deleted (ip link delete) while this fd was open" : strerror(e));
    return throw_errno(env, e, "ioctl(TUNGETIFF)", msg);
  }
  CHECK(napi_create_object(env, &out));
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &v); napi_set_named_property(env, out, "name", v);
  napi_create_int32(env, ifr.ifr_flags & 0xffff, &v); napi_set_named_property(env, out, "flags", v);
  return out;
}

/* adopt(fd): a TUN fd received from elsewhere (a holder), checked and registered like one open() made.
 * Sets O_NONBLOCK (on the open file, which the sender shares) and FD_CLOEXEC. On error the fd is closed. */
static napi_value js_adopt(napi_env env, napi_callback_info info) {
  napi_value argv[1], out, v; int32_t fd; char msg[300];
  if (!get_args(env, info, 1, argv)) return NULL;
  INT_ARG(argv[0], &fd, "fd");
  tun_state *s = state_of(env);
  if (fd < 0 || (fd < s->cap && s->by_fd[fd]))
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "adopt: fd is negative or already a TUN fd of this addon"), NULL;
  struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
    int e = errno; close(fd);
    snprintf(msg, sizeof msg, "the fd received is not an attached TUN device: TUNGETIFF failed with %s (%s)", strerrorname_np(e), strerror(e));
    return throw_errno(env, e, "ioctl(TUNGETIFF)", msg);
  }
  int kind = ifr.ifr_flags & (IFF_TUN | IFF_TAP);
  if (kind != IFF_TUN || !(ifr.ifr_flags & IFF_NO_PI)) {
    close(fd);
    snprintf(msg, sizeof msg, "the fd received is %s \"%.*s\"%s; tunproxy needs a TUN opened IFF_TUN|IFF_NO_PI",
             kind == IFF_TAP ? "a TAP device" : "a TUN device", IFNAMSIZ, ifr.ifr_name, ifr.ifr_flags & IFF_NO_PI ? "" : " with packet information (no IFF_NO_PI)");
    return throw_errno(env, EINVAL, "adopt", msg);
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    int e = errno; close(fd);
    return throw_errno(env, e, "fcntl", "cannot make the TUN fd non-blocking and close-on-exec");
  }
  /* the device's network namespace against ours (TUNGETDEVNETNS, Linux 5.2+): -1 unknown, 0 another, 1 ours */
  int same = -1;
  int nsfd = ioctl(fd, TUNGETDEVNETNS);
  if (nsfd >= 0) {
    struct stat a, b;
    if (fstat(nsfd, &a) == 0 && stat("/proc/self/ns/net", &b) == 0) same = a.st_ino == b.st_ino && a.st_dev == b.st_dev;
    close(nsfd);
  }
  if (!register_fd(env, fd, "adopt")) { close(fd); return NULL; }
  CHECK(napi_create_object(env, &out));
  napi_create_int32(env, fd, &v); napi_set_named_property(env, out, "fd", v);
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &v); napi_set_named_property(env, out, "name", v);
  napi_create_int32(env, ifr.ifr_flags & 0xffff, &v); napi_set_named_property(env, out, "flags", v);
  if (same < 0) napi_get_null(env, &v); else napi_get_boolean(env, same == 1, &v);
  napi_set_named_property(env, out, "sameNetns", v);
  return out;
}

static void cleanup(void *arg) { /* environment teardown: close what is still open */
  tun_state *s = arg;
  for (int fd = 0; fd < s->cap; fd++)
    if (s->by_fd[fd]) {
      if (s->by_fd[fd]->poll) uv_poll_stop(&s->by_fd[fd]->poll->handle);
      free(s->by_fd[fd]); close(fd);
    }
  free(s->by_fd); free(s);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  tun_state *s = calloc(1, sizeof *s);
  if (!s || napi_get_uv_event_loop(env, &s->loop) != napi_ok) return NULL;
  napi_set_instance_data(env, s, NULL, NULL);
  napi_add_env_cleanup_hook(env, cleanup, s);
  static const struct { const char *n; napi_callback f; } fns[] = {
    { "open", js_open }, { "readBatch", js_read_batch }, { "writeBatch", js_write_batch }, { "poll", js_poll },
    { "stopPoll", js_stop_poll }, { "close", js_close }, { "stats", js_stats }, { "setOffload", js_set_offload },
    { "readPacked", js_read_packed }, { "persist", js_persist }, { "sendFd", js_send_fd }, { "recvFd", js_recv_fd },
    { "fetchFd", js_fetch_fd }, { "adopt", js_adopt }, { "info", js_info } };
  static const struct { const char *n; int v; } consts[] = {
    { "IFF_MULTI_QUEUE", IFF_MULTI_QUEUE }, { "IFF_VNET_HDR", IFF_VNET_HDR }, { "TUN_F_CSUM", TUN_F_CSUM },
    { "TUN_F_TSO4", TUN_F_TSO4 }, { "TUN_F_TSO6", TUN_F_TSO6 }, { "TUN_F_TSO_ECN", TUN_F_TSO_ECN },
    { "TUN_F_USO4", TUN_F_USO4 }, { "TUN_F_USO6", TUN_F_USO6 }, { "VNET_HDR_SIZE", 10 } };
  napi_value v;
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_create_function(env, fns[i].n, NAPI_AUTO_LENGTH, fns[i].f, NULL, &v);
    napi_set_named_property(env, exports, fns[i].n, v);
  }
  for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++) {
    napi_create_int32(env, consts[i].v, &v);
    napi_set_named_property(env, exports, consts[i].n, v);
  }
  return exports;
}
