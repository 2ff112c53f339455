/* fdatasync_probe DIR [COUNT]: the floor of one durable commit in DIR. Appends 1 KiB to a new file
 * there COUNT times (default 200), each append followed by fdatasync(2), and prints the latency of
 * the pair (write + fdatasync) as one line of key=value pairs (µs), as bench/client.rs does.
 * The file is removed at the end. Not a test: nothing is asserted. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double pct(const double *v, int n, double p) {
  int i = (int)(p / 100.0 * (n - 1) + 0.5);
  return n ? v[i] : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: fdatasync_probe DIR [COUNT]\n");
    return 2;
  }
  int count = argc > 2 ? atoi(argv[2]) : 200;
  if (count < 1) count = 1;
  char path[4096];
  snprintf(path, sizeof path, "%s/fdatasync-probe.%d", argv[1], (int)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror(path);
    return 1;
  }
  char record[1024];
  memset(record, 'x', sizeof record);
  record[sizeof record - 1] = '\n';
  double *lat = calloc((size_t)count, sizeof *lat);
  if (!lat) return 1;
  for (int i = 0; i < count; i++) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (write(fd, record, sizeof record) != (ssize_t)sizeof record || fdatasync(fd) != 0) {
      perror("write/fdatasync");
      unlink(path);
      return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    lat[i] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    usleep(1000);
  }
  close(fd);
  unlink(path);
  qsort(lat, (size_t)count, sizeof *lat, cmp);
  printf("mode=fdatasync n=%d p50_us=%.1f p99_us=%.1f max_us=%.1f\n", count, pct(lat, count, 50),
         pct(lat, count, 99), lat[count - 1]);
  return 0;
}
