/*
 * stallprobe: how long the machine itself kept the highest-priority task off
 * each CPU (bench:reliability). One thread per CPU, pinned there at
 * SCHED_FIFO 99, wakes every millisecond (an absolute CLOCK_MONOTONIC timer)
 * and notes how late it woke. A late wake-up is time no task of this machine
 * could have run on that CPU: the hypervisor running something else (a VM's
 * vCPU not scheduled), the kernel with preemption or interrupts off, or the
 * kernel's fair server handing the CPU to ordinary tasks. A gap a stream shows
 * at the same time is the machine's, not the dataplane's.
 *
 *   stallprobe [--min-ms M]   (default 2: lateness recorded from M ms)
 *
 * Prints "ready" once every thread runs; on SIGTERM or SIGINT one JSON line:
 *   {"cpus":[{"cpu":C,"wakeups":N,"maxLateMs":L,"over2ms":A,"over5ms":B},...],
 *    "stalls":[[C,AT,LATE],...]}
 * AT: CLOCK_REALTIME ms when the wake-up was due, LATE: how late it came (ms);
 * every stall of at least --min-ms, the first 4096.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 256
#define MAX_STALLS 4096

struct cpu_stat {
  int cpu;
  unsigned long long wakeups, over2, over5;
  double max_late;
};

static struct cpu_stat stats[MAX_CPUS];
static double stall_at[MAX_STALLS], stall_late[MAX_STALLS];
static int stall_cpu[MAX_STALLS];
static int n_stalls;
static pthread_mutex_t stall_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t stop;
static double min_ms = 2.0;
static int started;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

static double ms_of(const struct timespec *t) { return t->tv_sec * 1e3 + t->tv_nsec / 1e6; }

static void *probe(void *arg) {
  struct cpu_stat *s = arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(s->cpu, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) fprintf(stderr, "stallprobe: cannot pin to CPU %d\n", s->cpu);
  struct sched_param p = {.sched_priority = 99};
  if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) != 0) fprintf(stderr, "stallprobe: CPU %d: SCHED_FIFO refused (not root?); measuring at the default priority\n", s->cpu);
  pthread_mutex_lock(&start_lock);
  started++;
  pthread_mutex_unlock(&start_lock);
  struct timespec due;
  clock_gettime(CLOCK_MONOTONIC, &due);
  while (!stop) {
    due.tv_nsec += 1000000;
    if (due.tv_nsec >= 1000000000) {
      due.tv_nsec -= 1000000000;
      due.tv_sec++;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
    struct timespec now, real;
    clock_gettime(CLOCK_MONOTONIC, &now);
    clock_gettime(CLOCK_REALTIME, &real);
    double late = ms_of(&now) - ms_of(&due);
    s->wakeups++;
    if (late > s->max_late) s->max_late = late;
    if (late > 2) s->over2++;
    if (late > 5) s->over5++;
    if (late >= min_ms) {
      pthread_mutex_lock(&stall_lock);
      if (n_stalls < MAX_STALLS) {
        stall_cpu[n_stalls] = s->cpu;
        stall_at[n_stalls] = ms_of(&real) - late;
        stall_late[n_stalls] = late;
        n_stalls++;
      }
      pthread_mutex_unlock(&stall_lock);
    }
    // a late wake-up starts the next period from now (no burst of catching up)
    if (late > 1) due = now;
  }
  return NULL;
}

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--min-ms") && i + 1 < argc) min_ms = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: stallprobe [--min-ms M]\n");
      return 2;
    }
  }
  cpu_set_t all;
  if (sched_getaffinity(0, sizeof all, &all) != 0) {
    perror("sched_getaffinity");
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  pthread_t th[MAX_CPUS];
  int n = 0;
  for (int c = 0; c < MAX_CPUS && c < CPU_SETSIZE; c++) {
    if (!CPU_ISSET(c, &all)) continue;
    stats[n].cpu = c;
    if (pthread_create(&th[n], NULL, probe, &stats[n]) != 0) {
      perror("pthread_create");
      return 1;
    }
    n++;
  }
  for (;;) {
    pthread_mutex_lock(&start_lock);
    int s = started;
    pthread_mutex_unlock(&start_lock);
    if (s == n) break;
    usleep(1000);
  }
  printf("ready\n");
  fflush(stdout);
  while (!stop) pause();
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  printf("{\"cpus\":[");
  for (int i = 0; i < n; i++)
    printf("%s{\"cpu\":%d,\"wakeups\":%llu,\"maxLateMs\":%.3f,\"over2ms\":%llu,\"over5ms\":%llu}", i ? "," : "", stats[i].cpu, stats[i].wakeups, stats[i].max_late, stats[i].over2, stats[i].over5);
  printf("],\"stalls\":[");
  for (int i = 0; i < n_stalls; i++) printf("%s[%d,%.3f,%.3f]", i ? "," : "", stall_cpu[i], stall_at[i], stall_late[i]);
  printf("]}\n");
  return 0;
}
