/* udpgso: UDP datagrams sent with UDP_SEGMENT (UDP GSO, Linux >= 4.18), so that
 * the kernel builds UDP super-packets (what TUN_F_USO4 lets a TUN carry), and a
 * receiver that checks every datagram's contents.
 *
 *   udpgso send --to ADDR --port P [--count N] [--size BYTES] [--gso SEG] [--gap-us US]
 *       N sends of BYTES bytes each, cut by the kernel into SEG-byte datagrams;
 *       datagram k carries its number (4 bytes, network order) then a pattern of k
 *   udpgso recv --port P [--idle-ms MS]
 *       count datagrams until MS ms pass without one; print one JSON line:
 *       {"datagrams": n, "bytes": n, "bad": n, "distinct": n, "seconds": first to last datagram}
 * "ready" is printed by recv once bound. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MAXSEQ (1 << 22)

static const char *arg(int argc, char **argv, const char *name, const char *def) {
  for (int i = 2; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
  return def;
}

static void fill(unsigned char *p, int len, uint32_t k) {
  uint32_t n = htonl(k);
  memcpy(p, &n, 4);
  for (int i = 4; i < len; i++) p[i] = (unsigned char)(k * 31 + i);
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: udpgso send|recv ...\n"); return 2; }
  int port = atoi(arg(argc, argv, "--port", "5201"));
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) { perror("socket"); return 1; }
  if (!strcmp(argv[1], "send")) {
    int count = atoi(arg(argc, argv, "--count", "100"));
    int size = atoi(arg(argc, argv, "--size", "60000"));
    int gso = atoi(arg(argc, argv, "--gso", "1400"));
    int gap = atoi(arg(argc, argv, "--gap-us", "200"));
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, arg(argc, argv, "--to", ""), &to.sin_addr) != 1) { fprintf(stderr, "--to: not an IPv4 address\n"); return 2; }
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }
    if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &gso, sizeof gso) < 0) { perror("setsockopt(UDP_SEGMENT)"); return 1; }
    unsigned char *buf = malloc(size);
    uint32_t k = 0; long sent = 0;
    for (int i = 0; i < count; i++) {
      for (int off = 0; off < size; off += gso) fill(buf + off, size - off < gso ? size - off : gso, k++);
      if (send(fd, buf, size, 0) < 0) { perror("send"); return 1; }
      sent += size;
      if (gap) usleep(gap);
    }
    printf("{\"datagrams\": %u, \"bytes\": %ld}\n", k, sent);
    return 0;
  }
  int idle = atoi(arg(argc, argv, "--idle-ms", "1500"));
  int rcv = 8 << 20;
  /* as root past net.core.rmem_max (SO_RCVBUF alone is capped by it: ~208 KiB) */
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) != 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
  if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }
  printf("ready\n"); fflush(stdout);
  static unsigned char seen[MAXSEQ], want[65536], buf[65536];
  long n = 0, bytes = 0, bad = 0, distinct = 0;
  struct timespec t0 = {0}, t1 = {0};
  struct pollfd p = { .fd = fd, .events = POLLIN };
  for (;;) {
    int r = poll(&p, 1, n ? idle : 30000);
    if (r <= 0) break;
    ssize_t len = recv(fd, buf, sizeof buf, 0);
    if (len < 4) { bad++; continue; }
    uint32_t k; memcpy(&k, buf, 4); k = ntohl(k);
    fill(want, (int)len, k);
    if (n == 0) clock_gettime(CLOCK_MONOTONIC, &t0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    n++; bytes += len;
    if (memcmp(buf, want, len) != 0 || k >= MAXSEQ) { bad++; continue; }
    if (!seen[k]) { seen[k] = 1; distinct++; }
  }
  double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  printf("{\"datagrams\": %ld, \"bytes\": %ld, \"bad\": %ld, \"distinct\": %ld, \"seconds\": %.6f}\n", n, bytes, bad, distinct, secs);
  return 0;
}
