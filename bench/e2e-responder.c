/* e2e-responder: the endpoint side of `npm run bench:e2e` — runs in a pod
 * namespace, answers every UDP datagram on --udp PORT with the same bytes
 * (recvmmsg/sendmmsg, batches of up to 64), and keeps a TCP socket listening
 * on --tcp PORT so that the kernel answers SYNs with SYN-ACKs (nothing is
 * ever accepted: the load generator resets each connection after the
 * SYN-ACK). Written in C so that the endpoint is not what limits the rates
 * being measured.
 *
 *   e2e-responder --udp 5353 [--tcp 8080] [--ipv6]
 *
 * --ipv6: the sockets are AF_INET6 with IPV6_V6ONLY off, so they answer IPv6
 * and IPv4 (as v4-mapped addresses) alike; without it they are AF_INET.
 *
 * Prints "ready" on stdout once bound; stops on SIGTERM/SIGINT and prints
 * {"answered":N} on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAXLEN 2048

static volatile sig_atomic_t stop_now = 0;
static void on_signal(int s) { (void)s; stop_now = 1; }

static void die(const char *what) {
  fprintf(stderr, "e2e-responder: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int port_arg(const char *name, const char *v) {
  char *end = NULL;
  long p = v ? strtol(v, &end, 10) : -1;
  if (!v || *end || p < 1 || p > 65535) {
    fprintf(stderr, "e2e-responder: %s: \"%s\" is not a port number 1-65535\n", name, v ? v : "");
    exit(2);
  }
  return (int)p;
}

int main(int argc, char **argv) {
  int udp_port = 0, tcp_port = 0, v6 = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--udp")) udp_port = port_arg("--udp", i + 1 < argc ? argv[++i] : NULL);
    else if (!strcmp(argv[i], "--tcp")) tcp_port = port_arg("--tcp", i + 1 < argc ? argv[++i] : NULL);
    else if (!strcmp(argv[i], "--ipv6")) v6 = 1;
    else {
      fprintf(stderr, "e2e-responder: unknown option %s\nusage: e2e-responder --udp PORT [--tcp PORT] [--ipv6]\n", argv[i]);
      return 2;
    }
  }
  if (!udp_port) {
    fprintf(stderr, "usage: e2e-responder --udp PORT [--tcp PORT]\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: recvmmsg returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  int one = 1, zero = 0;
  if (tcp_port) {
    int t = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (t < 0) die("socket(tcp)");
    setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6) {
      if (setsockopt(t, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0) die("IPV6_V6ONLY(tcp)");
      struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(tcp_port), .sin6_addr = IN6ADDR_ANY_INIT};
      if (bind(t, (struct sockaddr *)&a6, sizeof a6) < 0) die("bind(tcp6)");
    } else {
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(tcp_port), .sin_addr = {htonl(INADDR_ANY)}};
      if (bind(t, (struct sockaddr *)&a, sizeof a) < 0) die("bind(tcp)");
    }
    if (listen(t, 4096) < 0) die("listen");
  }
  int u = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
  if (u < 0) die("socket(udp)");
  int rcvbuf = 4 << 20;
  setsockopt(u, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (v6) {
    if (setsockopt(u, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0) die("IPV6_V6ONLY(udp)");
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(udp_port), .sin6_addr = IN6ADDR_ANY_INIT};
    if (bind(u, (struct sockaddr *)&a6, sizeof a6) < 0) die("bind(udp6)");
  } else {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(udp_port), .sin_addr = {htonl(INADDR_ANY)}};
    if (bind(u, (struct sockaddr *)&a, sizeof a) < 0) die("bind(udp)");
  }
  printf("ready\n");
  fflush(stdout);

  static char bufs[BATCH][MAXLEN];
  static struct sockaddr_in6 from[BATCH]; /* large enough for either family */
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  unsigned long long answered = 0;
  while (!stop_now) {
    for (int i = 0; i < BATCH; i++) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = MAXLEN;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &from[i];
      msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int n = recvmmsg(u, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("recvmmsg");
    }
    for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len; /* the same bytes back to the sender */
    int sent = 0;
    while (sent < n) {
      int m = sendmmsg(u, msgs + sent, n - sent, 0);
      if (m < 0) {
        if (errno == EINTR) continue;
        break; /* a full queue or an unreachable sender: that request is lost, the generator counts it */
      }
      sent += m;
    }
    answered += sent;
  }
  printf("{\"answered\":%llu}\n", answered);
  return 0;
}
