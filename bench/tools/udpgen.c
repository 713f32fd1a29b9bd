/* udpgen: a UDP load generator for the tunproxy lab (benchmarks and end-to-end tests).
 *
 *   udpgen --dst ADDR --dport PORT [options]
 *
 * Socket mode (default): --flows N connected UDP sockets (N flows, kernel-chosen
 * source ports), packets sent round robin in batches of --batch with sendmmsg.
 *
 * Raw mode (--raw): one IP_HDRINCL raw socket; every packet is built here with the
 * next (source address, source port) of --src/--src-count x --sport/--sports, so each
 * packet can be a flow of its own (a conntrack insert in the dataplane); sendmmsg too.
 *
 * Options:
 *   --size BYTES        UDP payload bytes (default 64)
 *   --duration SEC      send for this long (default 3; 0 = until --count)
 *   --count N           stop after N packets
 *   --rate PPS          pace to this rate (default: as fast as possible)
 *   --batch N           packets per sendmmsg (default 64, at most 256)
 *   --seq               payload starts with a 64-bit sequence number (big endian), from 0,
 *                       then (with --size 16 or more) the send time: CLOCK_REALTIME in ns,
 *                       64-bit big endian, read just before the sendmmsg call that sends it
 *   --flows N           socket mode: number of sockets (default 1)
 *   --src ADDR          raw mode: first source address (required with --raw)
 *   --src-count N       raw mode: consecutive source addresses (default 1)
 *   --sport PORT        raw mode: first source port (default 1024)
 *   --sports N          raw mode: source ports per address (default: up to 65535)
 *   --bad-udp-length    raw mode: send --count (default 1) packets whose UDP length field
 *                       says 100 bytes more than the datagram holds (a malformed packet)
 *
 * Prints one JSON line on stdout when done:
 *   {"sent":N,"seconds":S,"pps":P,"errors":E,"firstError":"...","maxSendGapMs":G}
 * maxSendGapMs: the longest time between two sendmmsg calls that sent something (this
 * sender's own pauses: its pacing, or the scheduler not running it).
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
#define MAX_FLOWS 4096
#define MAX_PAYLOAD 1400

static volatile sig_atomic_t stop_now = 0;
static void on_signal(int s) { (void)s; stop_now = 1; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "udpgen: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *msg) {
  fprintf(stderr, "udpgen: %s\nusage: udpgen --dst ADDR --dport PORT [--raw --src ADDR] [--size B] [--duration S] [--count N] [--rate PPS] [--seq] ...\n", msg);
  exit(2);
}

static uint64_t realtime_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s) {
  for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) s += (uint32_t)p[n - 1] << 8;
  return s;
}
static uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (uint16_t)~s;
}

static uint64_t arg_u(const char *v, const char *name, uint64_t max) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end || x > max) {
    fprintf(stderr, "udpgen: %s: \"%s\" is not a number within 0..%llu\n", name, v, (unsigned long long)max);
    exit(2);
  }
  return x;
}

static uint32_t arg_addr(const char *v, const char *name) {
  struct in_addr a;
  if (inet_pton(AF_INET, v, &a) != 1) {
    fprintf(stderr, "udpgen: %s: \"%s\" is not an IPv4 address\n", name, v);
    exit(2);
  }
  return ntohl(a.s_addr);
}

int main(int argc, char **argv) {
  uint32_t dst = 0, src = 0;
  unsigned dport = 0, size = 64, batch = 64, flows = 1, src_count = 1, sport0 = 1024, sports = 0;
  double duration = 3, rate = 0;
  uint64_t count = 0;
  int raw = 0, seq = 0, bad_len = 0, have_dst = 0, have_src = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV() do { if (!v) usage("an option needs a value"); i++; } while (0)
    if (!strcmp(a, "--dst")) { NEEDV(); dst = arg_addr(v, a); have_dst = 1; }
    else if (!strcmp(a, "--dport")) { NEEDV(); dport = arg_u(v, a, 65535); }
    else if (!strcmp(a, "--size")) { NEEDV(); size = arg_u(v, a, MAX_PAYLOAD); }
    else if (!strcmp(a, "--duration")) { NEEDV(); duration = atof(v); }
    else if (!strcmp(a, "--count")) { NEEDV(); count = arg_u(v, a, UINT64_MAX); }
    else if (!strcmp(a, "--rate")) { NEEDV(); rate = atof(v); }
    else if (!strcmp(a, "--batch")) { NEEDV(); batch = arg_u(v, a, MAX_BATCH); }
    else if (!strcmp(a, "--flows")) { NEEDV(); flows = arg_u(v, a, MAX_FLOWS); }
    else if (!strcmp(a, "--src")) { NEEDV(); src = arg_addr(v, a); have_src = 1; }
    else if (!strcmp(a, "--src-count")) { NEEDV(); src_count = arg_u(v, a, 65536); }
    else if (!strcmp(a, "--sport")) { NEEDV(); sport0 = arg_u(v, a, 65535); }
    else if (!strcmp(a, "--sports")) { NEEDV(); sports = arg_u(v, a, 65536); }
    else if (!strcmp(a, "--raw")) raw = 1;
    else if (!strcmp(a, "--seq")) seq = 1;
    else if (!strcmp(a, "--bad-udp-length")) { bad_len = 1; raw = 1; }
    else { fprintf(stderr, "udpgen: unknown option %s\n", a); usage("see the options above"); }
  }
  if (!have_dst || !dport) usage("--dst and --dport are required");
  if (raw && !have_src) usage("--raw needs --src (the source address of the packets)");
  if (!sports) sports = 65536 - sport0;
  if (batch < 1 || flows < 1 || src_count < 1 || sports < 1) usage("--batch, --flows, --src-count and --sports must be at least 1");
  if (sport0 + sports > 65536 || sport0 < 1) usage("--sport + --sports must stay within 1..65535");
  if (seq && size < 8) usage("--seq needs --size of at least 8");
  if (bad_len && !count) count = 1;
  if (!count && duration <= 0) usage("give --duration or --count");
  if (bad_len) duration = 0;

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  static uint8_t pkts[MAX_BATCH][20 + 8 + MAX_PAYLOAD];
  static struct mmsghdr msgs[MAX_BATCH];
  static struct iovec iov[MAX_BATCH];
  struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(dport), .sin_addr.s_addr = htonl(dst) };
  int fds[MAX_FLOWS];
  unsigned nfds = raw ? 1 : flows;
  unsigned hdr = raw ? 28 : 0;
  unsigned plen = hdr + size;

  if (raw) {
    fds[0] = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fds[0] < 0) die("socket(SOCK_RAW) (needs root or CAP_NET_RAW)");
    int one = 1;
    if (setsockopt(fds[0], IPPROTO_IP, IP_HDRINCL, &one, sizeof one) < 0) die("IP_HDRINCL");
  } else {
    for (unsigned f = 0; f < nfds; f++) {
      fds[f] = socket(AF_INET, SOCK_DGRAM, 0);
      if (fds[f] < 0) die("socket");
      if (connect(fds[f], (struct sockaddr *)&to, sizeof to) < 0) die("connect");
    }
  }
  int sndbuf = 4 << 20;
  for (unsigned f = 0; f < nfds; f++) setsockopt(fds[f], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);

  unsigned stamp = seq && size >= 16;
  for (unsigned i = 0; i < MAX_BATCH; i++) {
    memset(pkts[i], 0, sizeof pkts[i]);
    for (unsigned b = seq ? (stamp ? 16 : 8) : 0; b < size; b++) pkts[i][hdr + b] = (uint8_t)('a' + b % 26);
    iov[i].iov_base = pkts[i];
    iov[i].iov_len = plen;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    if (raw) {
      msgs[i].msg_hdr.msg_name = &to;
      msgs[i].msg_hdr.msg_namelen = sizeof to;
    }
  }

  uint64_t sent = 0, errors = 0, next_seq = 0;
  uint32_t src_i = 0, sport_i = 0;
  uint16_t ip_id = 1;
  char first_error[128] = "";
  unsigned flow = 0;
  double last_send = -1, max_send_gap = 0;
  double t0 = now_s(), tend = duration > 0 ? t0 + duration : 1e300;
  unsigned per_call = batch;
  if (rate > 0 && rate / 1000 < per_call) per_call = rate / 1000 < 1 ? 1 : (unsigned)(rate / 1000);

  while (!stop_now) {
    if (count && sent >= count) break;
    double t = now_s();
    if (t >= tend) break;
    if (rate > 0) {
      double due = t0 + sent / rate;
      if (due > t) {
        double w = due - t;
        struct timespec ts = { .tv_sec = (time_t)w, .tv_nsec = (long)((w - (time_t)w) * 1e9) };
        nanosleep(&ts, NULL);
        continue;
      }
    }
    unsigned n = per_call;
    if (count && count - sent < n) n = (unsigned)(count - sent);
    uint64_t ns = stamp ? realtime_ns() : 0;
    for (unsigned i = 0; i < n; i++) {
      uint8_t *p = pkts[i];
      if (seq) {
        uint64_t s = next_seq + i;
        for (int b = 0; b < 8; b++) p[hdr + b] = (uint8_t)(s >> (56 - 8 * b));
        if (stamp)
          for (int b = 0; b < 8; b++) p[hdr + 8 + b] = (uint8_t)(ns >> (56 - 8 * b));
      }
      if (!raw) continue;
      uint32_t s_addr = src + src_i;
      unsigned sp = sport0 + sport_i;
      if (++sport_i == sports) { sport_i = 0; if (++src_i == src_count) src_i = 0; }
      unsigned total = 28 + size;
      unsigned ulen = 8 + size + (bad_len ? 100 : 0);
      p[0] = 0x45; p[1] = 0; p[2] = total >> 8; p[3] = total & 255;
      p[4] = ip_id >> 8; p[5] = ip_id & 255; ip_id++;
      p[6] = 0x40; p[7] = 0; p[8] = 64; p[9] = IPPROTO_UDP; p[10] = p[11] = 0;
      p[12] = s_addr >> 24; p[13] = s_addr >> 16; p[14] = s_addr >> 8; p[15] = s_addr;
      p[16] = dst >> 24; p[17] = dst >> 16; p[18] = dst >> 8; p[19] = dst;
      uint16_t c = fold(sum16(p, 20, 0));
      p[10] = c >> 8; p[11] = c & 255;
      p[20] = sp >> 8; p[21] = sp & 255; p[22] = dport >> 8; p[23] = dport & 255;
      p[24] = ulen >> 8; p[25] = ulen & 255; p[26] = p[27] = 0;
      uint32_t ps = sum16(p + 12, 8, 0) + IPPROTO_UDP + (8 + size);
      c = fold(sum16(p + 20, 8 + size, ps));
      if (c == 0) c = 0xffff;
      p[26] = c >> 8; p[27] = c & 255;
    }
    int r = sendmmsg(fds[flow], msgs, n, 0);
    if (++flow == nfds) flow = 0;
    if (r < 0) {
      if (errno == EINTR) continue;
      errors++;
      if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", strerror(errno));
      if (errno == ENOBUFS || errno == EAGAIN) { usleep(50); continue; }
      if (errors > 1000) break;
      continue;
    }
    sent += (unsigned)r;
    next_seq += (unsigned)r;
    double ts = now_s();
    if (r > 0) {
      if (last_send >= 0 && ts - last_send > max_send_gap) max_send_gap = ts - last_send;
      last_send = ts;
    }
  }
  double secs = now_s() - t0;
  printf("{\"sent\":%llu,\"seconds\":%.6f,\"pps\":%.1f,\"errors\":%llu,\"firstError\":\"%s\",\"maxSendGapMs\":%.3f}\n",
         (unsigned long long)sent, secs, secs > 0 ? sent / secs : 0.0, (unsigned long long)errors, first_error, max_send_gap * 1e3);
  return 0;
}
