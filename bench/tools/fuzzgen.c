/* fuzzgen: malformed IPv4 packets for bench:reliability's fuzz scenario.
 *
 *   fuzzgen --dst ADDR --src ADDR [--count N] [--rate PPS] [--seed S] [--batch N]
 *
 * One IP_HDRINCL raw socket (root); every packet goes to --dst (a ClusterIP, so
 * the node routes it into the TUN) from --src with a random source port, and is
 * broken at the transport layer in one of these ways, chosen at random (the IP
 * header itself must pass the node's ip_rcv to reach the TUN: the kernel fills
 * in its checksum and total length):
 *   0 UDP, the length field larger than the datagram
 *   1 UDP, the length field below 8
 *   2 UDP, fewer than 8 bytes of header
 *   3 TCP, fewer than 20 bytes of header
 *   4 TCP, data offset below 5
 *   5 TCP, data offset beyond the packet
 *   6 ICMP, fewer than 8 bytes of header
 *   7 ICMP error (destination unreachable) quoting fewer than 28 bytes
 *   8 SCTP, fewer than 12 bytes of common header
 * plus random bytes after what the case fixes.
 *
 * Prints one JSON line when done:
 *   {"sent":N,"errors":E,"seconds":S,"byCase":[n0,...,n8],"firstError":"..."}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define CASES 9

static volatile sig_atomic_t stop_now = 0;
static void on_signal(int s) { (void)s; stop_now = 1; }
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
static uint64_t rng;
static uint32_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}
static void usage(const char *m) {
  fprintf(stderr, "fuzzgen: %s\nusage: fuzzgen --dst ADDR --src ADDR [--count N] [--rate PPS] [--seed S] [--batch N]\n", m);
  exit(2);
}

/* one malformed packet into p; returns its length */
static unsigned build(uint8_t *p, uint32_t src, uint32_t dst, unsigned c) {
  unsigned l4len;
  uint8_t proto;
  uint8_t *l4 = p + 20;
  for (unsigned i = 0; i < 120; i++) l4[i] = (uint8_t)rnd();
  switch (c) {
  case 0: proto = 17; l4len = 8 + rnd() % 64; l4[4] = (uint8_t)((l4len + 1 + rnd() % 200) >> 8); l4[5] = (uint8_t)(l4len + 1 + rnd() % 200); break;
  case 1: proto = 17; l4len = 8 + rnd() % 64; l4[4] = 0; l4[5] = (uint8_t)(rnd() % 8); break;
  case 2: proto = 17; l4len = rnd() % 8; break;
  case 3: proto = 6; l4len = rnd() % 20; break;
  case 4: proto = 6; l4len = 20 + rnd() % 40; l4[12] = (uint8_t)((rnd() % 5) << 4); break;
  case 5: proto = 6; l4len = 20 + rnd() % 20; l4[12] = (uint8_t)((l4len / 4 + 1 + rnd() % 3) << 4); break; /* offset * 4 > l4len */
  case 6: proto = 1; l4len = rnd() % 8; break;
  case 7: proto = 1; l4len = 8 + rnd() % 20; l4[0] = 3; l4[1] = (uint8_t)(rnd() % 16); break;
  default: proto = 132; l4len = rnd() % 12; break;
  }
  unsigned len = 20 + l4len;
  p[0] = 0x45; p[1] = 0; p[2] = (uint8_t)(len >> 8); p[3] = (uint8_t)len;
  p[4] = (uint8_t)rnd(); p[5] = (uint8_t)rnd() | 1; p[6] = 0x40; p[7] = 0; p[8] = 64; p[9] = proto; p[10] = p[11] = 0;
  uint32_t s = htonl(src), d = htonl(dst);
  memcpy(p + 12, &s, 4);
  memcpy(p + 16, &d, 4);
  return len;
}

int main(int argc, char **argv) {
  uint32_t dst = 0, src = 0;
  uint64_t count = 1000;
  double rate = 0;
  unsigned batch = 64;
  rng = 0x9e3779b97f4a7c15ull;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc) usage("every option takes a value");
    const char *v = argv[++i];
    struct in_addr ia;
    if (!strcmp(a, "--dst")) { if (inet_pton(AF_INET, v, &ia) != 1) usage("--dst: not an IPv4 address"); dst = ntohl(ia.s_addr); }
    else if (!strcmp(a, "--src")) { if (inet_pton(AF_INET, v, &ia) != 1) usage("--src: not an IPv4 address"); src = ntohl(ia.s_addr); }
    else if (!strcmp(a, "--count")) count = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--rate")) rate = atof(v);
    else if (!strcmp(a, "--seed")) rng = strtoull(v, NULL, 10) * 0x9e3779b97f4a7c15ull | 1;
    else if (!strcmp(a, "--batch")) batch = (unsigned)atoi(v);
    else usage("unknown option");
  }
  if (!dst || !src) usage("--dst and --src are required");
  if (batch < 1 || batch > MAX_BATCH) usage("--batch must be 1..256");
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
  if (fd < 0) { perror("socket(SOCK_RAW) (needs root)"); return 1; }
  int one = 1;
  if (setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof one) < 0) { perror("IP_HDRINCL"); return 1; }
  int sndbuf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
  static uint8_t pkts[MAX_BATCH][20 + 128];
  static struct mmsghdr msgs[MAX_BATCH];
  static struct iovec iov[MAX_BATCH];
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(dst)};
  uint64_t by_case[CASES] = {0}, sent = 0, errors = 0;
  unsigned cases[MAX_BATCH];
  char first_error[128] = "";
  if (rate > 0 && rate / 1000 < batch) batch = rate / 1000 < 1 ? 1 : (unsigned)(rate / 1000);
  double t0 = now_s();
  while (!stop_now && sent < count) {
    if (rate > 0) {
      double due = t0 + sent / rate, t = now_s();
      if (due > t) {
        double w = due - t;
        struct timespec ts = {.tv_sec = (time_t)w, .tv_nsec = (long)((w - (time_t)w) * 1e9)};
        nanosleep(&ts, NULL);
        continue;
      }
    }
    unsigned n = batch;
    if (count - sent < n) n = (unsigned)(count - sent);
    for (unsigned i = 0; i < n; i++) {
      cases[i] = rnd() % CASES;
      iov[i].iov_base = pkts[i];
      iov[i].iov_len = build(pkts[i], src, dst, cases[i]);
      memset(&msgs[i], 0, sizeof msgs[i]);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &to;
      msgs[i].msg_hdr.msg_namelen = sizeof to;
    }
    int r = sendmmsg(fd, msgs, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      errors++;
      if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", strerror(errno));
      if (errno == ENOBUFS || errno == EAGAIN) { struct timespec ts = {0, 200000}; nanosleep(&ts, NULL); continue; }
      break;
    }
    for (int i = 0; i < r; i++) by_case[cases[i]]++;
    sent += (uint64_t)r;
  }
  double secs = now_s() - t0;
  printf("{\"sent\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"byCase\":[", (unsigned long long)sent, (unsigned long long)errors, secs);
  for (int i = 0; i < CASES; i++) printf("%s%llu", i ? "," : "", (unsigned long long)by_case[i]);
  printf("],\"firstError\":\"%s\"}\n", first_error);
  return 0;
}
