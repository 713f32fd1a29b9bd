/* pin.node: memory that outlives the process. Maps a file (in /dev/shm) with
 * MAP_SHARED and hands it to JS as an ArrayBuffer over the mapping, so that a
 * state table written with plain typed-array stores is still there, byte for
 * byte, after the process is killed (as Cilium pins its BPF maps in bpffs).
 * All layout and checking lives in TypeScript (dataplane/conntrack-pinned.ts).
 *
 *   map(path, size, create)  -> ArrayBuffer over the file's pages
 *                               create: O_CREAT|O_EXCL, ftruncate(size), zero-filled
 *                               else:   the existing file, size 0 = its whole length
 *   boottimeMs()             -> CLOCK_BOOTTIME in ms (counts suspend; one clock per boot)
 *   netnsCookie()            -> SO_NETNS_COOKIE: this network namespace, never reused in the boot
 *   mallocInfo()             -> the C heap of the process (glibc's mallinfo2, every arena):
 *                               { inUseBytes, freeBytes, mmapBytes }, or null without glibc
 *   mallocTrim()             -> glibc's malloc_trim(0): the whole free pages inside every arena
 *                               given back to the kernel; true when some were (false without glibc)
 *
 * The mapping is released when the ArrayBuffer is collected; the file stays
 * until it is unlinked. */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdint.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *what) {
  char msg[512];
  const char *name = strerrorname_np(err);
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, what, strerror(err));
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

static napi_value type_error(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static void unmap_cb(napi_env env, void *data, void *hint) {
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value pin_map(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) return type_error(env, "map(path: string, size: number, create: boolean)");
  char path[4096];
  size_t len = 0;
  double dsize = 0;
  bool create = false;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len == 0 || len >= sizeof path - 1) return type_error(env, "map: path must be a non-empty string");
  if (napi_get_value_double(env, argv[1], &dsize) != napi_ok || dsize < 0 || dsize > 1099511627776.0) return type_error(env, "map: size must be a number of bytes");
  if (napi_get_value_bool(env, argv[2], &create) != napi_ok) return type_error(env, "map: create must be a boolean");
  size_t size = (size_t)dsize;
  int fd = open(path, create ? (O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC) : (O_RDWR | O_CLOEXEC), 0600);
  if (fd < 0) return throw_errno(env, errno, "open", path);
  if (create) {
    if (size == 0 || ftruncate(fd, (off_t)size) != 0) {
      int e = size == 0 ? EINVAL : errno;
      close(fd);
      unlink(path);
      return throw_errno(env, e, "ftruncate", path);
    }
  } else {
    struct stat st;
    if (fstat(fd, &st) != 0) {
      int e = errno;
      close(fd);
      return throw_errno(env, e, "fstat", path);
    }
    if (size == 0) size = (size_t)st.st_size;
    if (size == 0 || (off_t)size > st.st_size) {
      close(fd);
      return throw_errno(env, EINVAL, "map", path); /* empty, or shorter than asked */
    }
  }
  /* MAP_POPULATE: the pages are allocated now, not by a page fault on the packet path */
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  int e = errno;
  close(fd); /* the mapping keeps the file */
  if (p == MAP_FAILED) return throw_errno(env, e, "mmap", path);
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, size, unmap_cb, (void *)(uintptr_t)size, &ab) != napi_ok) {
    munmap(p, size);
    return NULL;
  }
  return ab;
}

static napi_value pin_boottime(napi_env env, napi_callback_info info) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  napi_value v;
  napi_create_double(env, (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6, &v);
  return v;
}

/* SO_NETNS_COOKIE of this process's network namespace: unique for the boot,
 * never reused (the namespace's inode number can be, once it is gone). */
static napi_value pin_netns_cookie(napi_env env, napi_callback_info info) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return throw_errno(env, errno, "socket", "SO_NETNS_COOKIE");
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  int r = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
  int e = errno;
  close(s);
  if (r != 0) return throw_errno(env, e, "getsockopt", "SO_NETNS_COOKIE");
  napi_value v;
  napi_create_double(env, (double)cookie, &v);
  return v;
}

/* The C heap (node's buffers, libuv, V8's own mallocs), not V8's JS heap:
 * glibc keeps the memory a thread frees in that thread's arena, for its next
 * malloc, and gives back only the arena's top. A long-running process whose
 * threads allocate and free buffers of many sizes (a rule set's HTTP body, a
 * listing's chunks) sees its resident set creep with free memory it holds. */
static napi_value pin_malloc_info(napi_env env, napi_callback_info info) {
  napi_value o;
#ifdef __GLIBC__
  struct mallinfo2 m = mallinfo2();
  napi_value v;
  napi_create_object(env, &o);
  napi_create_double(env, (double)m.uordblks, &v);
  napi_set_named_property(env, o, "inUseBytes", v);
  napi_create_double(env, (double)m.fordblks, &v);
  napi_set_named_property(env, o, "freeBytes", v);
  napi_create_double(env, (double)m.hblkhd, &v);
  napi_set_named_property(env, o, "mmapBytes", v);
#else
  napi_get_null(env, &o);
#endif
  return o;
}

static napi_value pin_malloc_trim(napi_env env, napi_callback_info info) {
  napi_value v;
#ifdef __GLIBC__
  napi_get_boolean(env, malloc_trim(0) != 0, &v);
#else
  napi_get_boolean(env, false, &v);
#endif
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"map", NULL, pin_map, NULL, NULL, NULL, napi_enumerable, NULL},
    {"boottimeMs", NULL, pin_boottime, NULL, NULL, NULL, napi_enumerable, NULL},
    {"netnsCookie", NULL, pin_netns_cookie, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mallocInfo", NULL, pin_malloc_info, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mallocTrim", NULL, pin_malloc_trim, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
