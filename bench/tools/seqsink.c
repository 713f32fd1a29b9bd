/* seqsink: the receiving end of bench:reliability's sequence-numbered stream.
 * Counts every datagram arriving at one address/port by its sequence number
 * (udpgen --seq: a 64-bit big-endian number at the start of the payload),
 * and the longest silence at the receiver. Never answers.
 *
 *   seqsink --bind ADDR --port PORT [--expect N] [--duration SEC] [--idle MS]
 *
 *   --expect N     sequence numbers 0..N-1 belong to the stream; a datagram with
 *                  a higher one, or too short to hold one, is foreign (misdelivered)
 *                  (default 2^27; at most 2^28)
 *   --duration S   stop after S seconds whatever happens (default 3600)
 *   --idle MS      stop once no datagram came for MS ms after the first (default 0: never;
 *                  SIGTERM/SIGINT stop it)
 *
 * Prints "ready" once bound, then one JSON line when it stops:
 *   {"received":R,"distinct":D,"duplicates":U,"foreign":F,"maxSeq":M,
 *    "maxGapMs":G,"maxGapAtMs":A,"firstAtMs":T0,"lastAtMs":T1,"gapsOver5ms":K,
 *    "maxGapSendMs":S,"maxDelayMs":L,"delaysOver5ms":K2,"maxWakeGapMs":W}
 * maxGapMs: the longest time between two consecutive arrivals, by the time the
 * kernel received each datagram on this socket (SO_TIMESTAMPNS), so this process's
 * own scheduling does not count; maxGapAtMs when that gap ended, counted from the
 * first datagram; gapsOver5ms how many gaps were longer than 5 ms; firstAtMs/lastAtMs:
 * CLOCK_REALTIME ms of the first and last arrival.
 * When the datagrams carry their send time (udpgen --seq with --size >= 16: CLOCK_REALTIME
 * ns in bytes 8..15): maxGapSendMs is how far apart the two datagrams around the longest
 * gap were sent (a gap the sender made itself shows here too), maxDelayMs the longest
 * time from send to arrival of any datagram (how long the path held one), delaysOver5ms
 * how many took longer than 5 ms. SIGUSR1 marks a moment (the start of an event):
 * "lead":{"maxGapMs","gapsOver5ms","maxDelayMs","received"} are the same figures for the
 * datagrams that arrived before it (null without a mark). maxWakeGapMs: the longest time between two wake-ups
 * of this process that found datagrams (its own scheduling; for comparison).
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
#define SLOT 2048

static volatile sig_atomic_t stop_now = 0, mark_now = 0;
static void on_signal(int s) { (void)s; stop_now = 1; }
static void on_mark(int s) { (void)s; mark_now = 1; }

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(const char *msg) {
  fprintf(stderr, "seqsink: %s\nusage: seqsink --bind ADDR --port PORT [--expect N] [--duration SEC] [--idle MS]\n", msg);
  exit(2);
}

int main(int argc, char **argv) {
  const char *bind_addr = NULL;
  unsigned port = 0;
  uint64_t expect = 1ull << 27;
  double duration = 3600, idle = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--bind") && v) bind_addr = argv[++i];
    else if (!strcmp(a, "--port") && v) port = (unsigned)atoi(argv[++i]);
    else if (!strcmp(a, "--expect") && v) expect = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(a, "--duration") && v) duration = atof(argv[++i]);
    else if (!strcmp(a, "--idle") && v) idle = atof(argv[++i]);
    else usage("unknown or incomplete option");
  }
  if (!bind_addr || port == 0 || port > 65535) usage("--bind and --port are required");
  if (expect == 0 || expect > (1ull << 28)) usage("--expect must be 1..2^28");
  uint8_t *seen = calloc((size_t)(expect + 7) / 8, 1);
  if (!seen) usage("out of memory");
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGUSR1, on_mark);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) { perror("socket"); return 1; }
  int rcvbuf = 16 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) != 0) { perror("SO_TIMESTAMPNS"); return 1; }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, bind_addr, &sa.sin_addr) != 1) usage("--bind must be an IPv4 address");
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("bind"); return 1; }
  printf("ready\n");
  fflush(stdout);

  static uint8_t bufs[BATCH][SLOT];
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  static char ctl[BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = SLOT;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  uint64_t received = 0, distinct = 0, dups = 0, foreign = 0, max_seq = 0, gaps5 = 0, delays5 = 0;
  double start = now_ms(), first = -1, last = -1, max_gap = 0, max_gap_at = 0;
  int marked = 0;
  double lead_gap = 0, lead_delay = 0;
  uint64_t lead_gaps5 = 0, lead_received = 0;
  double last_sent = -1, max_gap_send = -1, max_delay = 0, last_wake = -1, max_wake = 0;
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  while (!stop_now) {
    double t = now_ms();
    if (t - start > duration * 1e3) break;
    if (idle > 0 && first >= 0 && t - last > idle) break;
    int r = poll(&pfd, 1, 20);
    if (r <= 0) continue;
    for (int i = 0; i < BATCH; i++) {
      msgs[i].msg_hdr.msg_control = ctl[i];
      msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) continue;
    if (mark_now && !marked) {
      marked = 1;
      lead_gap = max_gap;
      lead_delay = max_delay;
      lead_gaps5 = gaps5;
      lead_received = received;
    }
    double wake = now_ms();
    if (last_wake >= 0 && wake - last_wake > max_wake) max_wake = wake - last_wake;
    last_wake = wake;
    double fallback = real_ms();
    for (int i = 0; i < n; i++) {
      /* the kernel's receive time of this datagram */
      double at = fallback;
      for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
          struct timespec ts;
          memcpy(&ts, CMSG_DATA(c), sizeof ts);
          at = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
        }
      double sent_at = -1;
      if (msgs[i].msg_len >= 16) {
        uint64_t ns = 0;
        for (int b = 8; b < 16; b++) ns = (ns << 8) | bufs[i][b];
        sent_at = ns / 1e6;
        double d = at - sent_at;
        if (d > max_delay) max_delay = d;
        if (d > 5) delays5++;
      }
      if (first < 0) first = at;
      else if (at - last > max_gap) {
        max_gap = at - last;
        max_gap_at = at - first;
        max_gap_send = sent_at >= 0 && last_sent >= 0 ? sent_at - last_sent : -1;
      }
      if (last >= 0 && at - last > 5) gaps5++;
      last = at;
      last_sent = sent_at;
      received++;
      if (msgs[i].msg_len < 8) { foreign++; continue; }
      uint64_t s = 0;
      for (int b = 0; b < 8; b++) s = (s << 8) | bufs[i][b];
      if (s >= expect) { foreign++; continue; }
      if (seen[s >> 3] & (1u << (s & 7))) dups++;
      else {
        seen[s >> 3] |= (uint8_t)(1u << (s & 7));
        distinct++;
        if (s > max_seq) max_seq = s;
      }
    }
  }
  printf("{\"received\":%llu,\"distinct\":%llu,\"duplicates\":%llu,\"foreign\":%llu,\"maxSeq\":%llu,\"maxGapMs\":%.3f,\"maxGapAtMs\":%.1f,\"firstAtMs\":%.3f,\"lastAtMs\":%.3f,\"gapsOver5ms\":%llu,\"maxGapSendMs\":%.3f,\"maxDelayMs\":%.3f,\"delaysOver5ms\":%llu,\"maxWakeGapMs\":%.3f,\"lead\":",
         (unsigned long long)received, (unsigned long long)distinct, (unsigned long long)dups, (unsigned long long)foreign,
         (unsigned long long)max_seq, max_gap, max_gap_at, first, last, (unsigned long long)gaps5,
         max_gap_send, max_delay, (unsigned long long)delays5, max_wake);
  if (marked)
    printf("{\"maxGapMs\":%.3f,\"gapsOver5ms\":%llu,\"maxDelayMs\":%.3f,\"received\":%llu}}\n", lead_gap, (unsigned long long)lead_gaps5, lead_delay, (unsigned long long)lead_received);
  else
    printf("null}\n");
  fflush(stdout);
  return 0;
}
