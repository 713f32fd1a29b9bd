/* udpsink: counts the UDP datagrams arriving at one address/port (the receiving pod
 * of the tunproxy lab's benchmarks and tests). Never answers.
 *
 *   udpsink --bind ADDR --port PORT [--warmup MS] [--idle MS] [--duration SEC] [--seq]
 *
 *   --warmup MS    count only what arrives from MS ms after the first datagram on
 *                  (the forwarder's warm-up is left out of the rate)
 *   --idle MS      stop once no datagram came for MS ms after the first one (default 1000)
 *   --duration S   stop after S seconds whatever happens (default 120)
 *   --seq          datagrams start with a 64-bit big-endian sequence number: count the
 *                  distinct ones, duplicates and the highest seen (up to 2^26 numbers)
 *
 * Prints "ready" on stdout once bound, then one JSON line when it stops (also on SIGTERM):
 *   {"received":N,"counted":C,"seconds":S,"pps":P,"bytes":B,"distinct":D,"duplicates":U,"maxSeq":M}
 * counted/seconds cover the datagrams after the warm-up, from the first batch received to the
 * last; pps is the rate between those two (the first batch's datagrams left out).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define SEQ_BITS (1u << 26)

static volatile sig_atomic_t stop_now = 0;
static void on_signal(int s) { (void)s; stop_now = 1; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  const char *bind_addr = NULL;
  unsigned port = 0;
  double warmup = 0, idle = 1.0, duration = 120;
  int seq = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--seq")) { seq = 1; continue; }
    if (!v) { fprintf(stderr, "udpsink: %s needs a value\n", a); return 2; }
    i++;
    if (!strcmp(a, "--bind")) bind_addr = v;
    else if (!strcmp(a, "--port")) port = (unsigned)atoi(v);
    else if (!strcmp(a, "--warmup")) warmup = atof(v) / 1000;
    else if (!strcmp(a, "--idle")) idle = atof(v) / 1000;
    else if (!strcmp(a, "--duration")) duration = atof(v);
    else { fprintf(stderr, "udpsink: unknown option %s\n", a); return 2; }
  }
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
  if (!bind_addr || inet_pton(AF_INET, bind_addr, &sa.sin_addr) != 1 || port < 1 || port > 65535) {
    fprintf(stderr, "udpsink: --bind must be an IPv4 address and --port 1..65535\n");
    return 2;
  }
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) { perror("udpsink: socket"); return 1; }
  int rcvbuf = 16 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("udpsink: bind"); return 1; }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  uint8_t *seen = seq ? calloc(SEQ_BITS / 8, 1) : NULL;
  if (seq && !seen) { perror("udpsink: calloc"); return 1; }
  static uint8_t bufs[BATCH][2048];
  static struct mmsghdr msgs[BATCH];
  static struct iovec iov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = sizeof bufs[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  printf("ready\n");
  fflush(stdout);

  uint64_t received = 0, counted = 0, first_batch = 0, bytes = 0, distinct = 0, dups = 0, max_seq = 0, beyond = 0;
  double start = now_s(), first = 0, last = 0, cfirst = 0, clast = 0;
  while (!stop_now) {
    double t = now_s();
    if (t - start > duration) break;
    if (received && t - last > idle) break;
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int pr = poll(&p, 1, 50);
    if (pr <= 0) continue;
    int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) continue;
    t = now_s();
    if (!received) first = t;
    last = t;
    received += (unsigned)n;
    if (t - first >= warmup) {
      if (!counted) { cfirst = t; first_batch = (unsigned)n; }
      clast = t;
      counted += (unsigned)n;
    }
    for (int i = 0; i < n; i++) {
      bytes += msgs[i].msg_len;
      if (seq && msgs[i].msg_len >= 8) {
        uint64_t s = 0;
        for (int b = 0; b < 8; b++) s = s << 8 | bufs[i][b];
        if (s >= SEQ_BITS) { beyond++; continue; }
        if (s > max_seq) max_seq = s;
        uint8_t bit = (uint8_t)(1u << (s & 7));
        if (seen[s >> 3] & bit) dups++;
        else { seen[s >> 3] |= bit; distinct++; }
      }
    }
  }
  double secs = clast - cfirst;
  printf("{\"received\":%llu,\"counted\":%llu,\"seconds\":%.6f,\"pps\":%.1f,\"bytes\":%llu,\"distinct\":%llu,\"duplicates\":%llu,\"maxSeq\":%llu,\"beyondSeqRange\":%llu}\n",
         (unsigned long long)received, (unsigned long long)counted, secs, secs > 0 ? (counted - first_batch) / secs : 0.0,
         (unsigned long long)bytes, (unsigned long long)distinct, (unsigned long long)dups, (unsigned long long)max_seq,
         (unsigned long long)beyond);
  return 0;
}
