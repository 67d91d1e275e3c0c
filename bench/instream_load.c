/* A clamd INSTREAM load generator for bench/run_daemon_bench.py.
 *
 * Written in C so that the client is not what the benchmark measures: the Python client (64
 * threads under one GIL) used most of a core of the 2-core machine by itself and held both
 * daemons to the same ceiling.  Each client thread connects to the unix socket, sends
 * "zINSTREAM\0", the file in 8 KiB chunks (as clamdscan does), the zero-length end chunk, reads
 * the reply up to its NUL and checks it: "stream: OK" for a clean file, "... FOUND" for an
 * infected one.  Anything else, or a socket error, is an error.
 *
 *     instream_load SOCKET CLIENTS SECONDS LISTFILE
 *
 * LISTFILE has one line per corpus file: "0 PATH" (clean) or "1 PATH" (infected).  Client k sends
 * files k, k+CLIENTS, k+2*CLIENTS, ... in a loop until SECONDS have passed.  Prints one JSON object:
 * requests, errors, bytes, wall (s), p50 and p99 (s).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 8192

struct file { unsigned char *data; size_t size; int infected; };
struct client {
    int index;
    double *latencies;
    size_t count, room;
    long errors;
    uint64_t bytes;
};

static struct file *files;
static size_t nfiles;
static int nclients;
static double deadline;
static const char *socket_path;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_all(int fd, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* 1 when the reply was the expected one, 0 otherwise */
static int one_request(const struct file *f) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) goto out;
    if (send_all(fd, "zINSTREAM", 10) != 0) goto out;
    for (size_t at = 0; at < f->size; at += CHUNK) {
        size_t len = f->size - at < CHUNK ? f->size - at : CHUNK;
        unsigned char head[4] = {len >> 24, len >> 16, len >> 8, len};
        if (send_all(fd, head, 4) != 0 || send_all(fd, f->data + at, len) != 0) goto out;
    }
    static const unsigned char end[4] = {0};
    if (send_all(fd, end, 4) != 0) goto out;
    char reply[512];
    size_t got = 0;
    while (got < sizeof reply - 1) {
        ssize_t n = recv(fd, reply + got, sizeof reply - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
        if (reply[got - 1] == '\0') break;
    }
    if (got == 0 || reply[got - 1] != '\0') goto out;
    size_t len = strlen(reply);
    if (f->infected)
        ok = len > 6 && strcmp(reply + len - 6, " FOUND") == 0;
    else
        ok = strcmp(reply, "stream: OK") == 0;
out:
    close(fd);
    return ok;
}

static void *run_client(void *arg) {
    struct client *c = arg;
    size_t i = (size_t)c->index;
    while (now() < deadline) {
        const struct file *f = &files[i % nfiles];
        i += (size_t)nclients;
        double t0 = now();
        int ok = one_request(f);
        double dt = now() - t0;
        if (c->count == c->room) {
            c->room = c->room ? c->room * 2 : 1024;
            c->latencies = realloc(c->latencies, c->room * sizeof *c->latencies);
        }
        c->latencies[c->count++] = dt;
        c->bytes += f->size;
        c->errors += !ok;
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int load_list(const char *list) {
    FILE *fh = fopen(list, "r");
    if (!fh) return -1;
    char line[4096];
    size_t room = 0;
    while (fgets(line, sizeof line, fh)) {
        line[strcspn(line, "\n")] = 0;
        if (strlen(line) < 3) continue;
        FILE *in = fopen(line + 2, "rb");
        if (!in) { fclose(fh); return -1; }
        fseek(in, 0, SEEK_END);
        long size = ftell(in);
        fseek(in, 0, SEEK_SET);
        if (nfiles == room) {
            room = room ? room * 2 : 256;
            files = realloc(files, room * sizeof *files);
        }
        files[nfiles].data = malloc(size ? (size_t)size : 1);
        files[nfiles].size = fread(files[nfiles].data, 1, (size_t)size, in);
        files[nfiles].infected = line[0] == '1';
        nfiles++;
        fclose(in);
    }
    fclose(fh);
    return nfiles ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SOCKET CLIENTS SECONDS LISTFILE\n", argv[0]);
        return 2;
    }
    socket_path = argv[1];
    nclients = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (nclients < 1 || load_list(argv[4]) != 0) {
        fprintf(stderr, "instream_load: bad client count or unreadable list %s\n", argv[4]);
        return 2;
    }
    struct client *clients = calloc((size_t)nclients, sizeof *clients);
    pthread_t *threads = calloc((size_t)nclients, sizeof *threads);
    double t0 = now();
    deadline = t0 + seconds;
    for (int k = 0; k < nclients; k++) {
        clients[k].index = k;
        pthread_create(&threads[k], NULL, run_client, &clients[k]);
    }
    size_t total = 0;
    long errors = 0;
    uint64_t bytes = 0;
    for (int k = 0; k < nclients; k++) {
        pthread_join(threads[k], NULL);
        total += clients[k].count;
        errors += clients[k].errors;
        bytes += clients[k].bytes;
    }
    double wall = now() - t0;
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t at = 0;
    for (int k = 0; k < nclients; k++) {
        memcpy(all + at, clients[k].latencies, clients[k].count * sizeof *all);
        at += clients[k].count;
    }
    qsort(all, total, sizeof *all, by_value);
    double p50 = total ? all[total / 2] : 0, p99 = total ? all[(size_t)(total * 0.99)] : 0;
    printf("{\"requests\": %zu, \"errors\": %ld, \"bytes\": %llu, \"wall\": %.6f, \"p50\": %.6f, \"p99\": %.6f}\n",
           total, errors, (unsigned long long)bytes, wall, p50, p99);
    return 0;
}
