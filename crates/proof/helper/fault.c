/* Faults inside the server under test, loaded with LD_PRELOAD by
 * hotpatch-proof (--fault threads|fork-exec). A constructor starts one thread
 * that, for as long as the process lives, in a tight loop either
 *   threads:   creates a thread and joins it, or
 *   fork-exec: forks a child that execs /bin/true, and waits for it,
 * so that every transition the engine runs meets a thread list or a process
 * that changes under it. A process forked by the server itself (nginx's
 * workers) gets its own fault thread too. Every 256 rounds (16 forks) the count is
 * written to $HOTPATCH_PROOF_FAULT_COUNT.<pid>, for the report. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int mode; /* 1: threads, 2: fork-exec */
/* Read at load: nginx hands its workers an environment of its own. */
static char count_prefix[4000];
static __thread int in_fault_fork;

static void *nothing(void *arg) { return arg; }

static void record(unsigned long rounds) {
    char path[4096], text[32];
    if (!count_prefix[0] || snprintf(path, sizeof path, "%s.%d", count_prefix, (int)getpid()) >= (int)sizeof path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    int n = snprintf(text, sizeof text, "%lu\n", rounds);
    if (write(fd, text, (size_t)n) != n) { /* a lost count is not a fault */ }
    close(fd);
}

static int fork_exec_once(void) {
    in_fault_fork = 1;
    pid_t pid = fork();
    in_fault_fork = 0;
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    if (pid < 0)
        return -1;
    /* The server may reap it first (nginx reaps any child on SIGCHLD). */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

static void *fault_loop(void *arg) {
    (void)arg;
    for (unsigned long rounds = 1;; rounds++) {
        if (mode == 1) {
            pthread_t t;
            if (pthread_create(&t, NULL, nothing, NULL) == 0)
                pthread_join(t, NULL);
        } else if (fork_exec_once() < 0) {
            usleep(1000);
        }
        if (rounds % (mode == 1 ? 256 : 16) == 0)
            record(rounds);
    }
    return NULL;
}

static void start(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, fault_loop, NULL) == 0)
        pthread_detach(t);
}

/* A child the server forks (a worker) runs the fault too; a child of the
 * fault's own fork only execs. */
static void in_child(void) {
    if (!in_fault_fork)
        start();
}

__attribute__((constructor)) static void init(void) {
    const char *m = getenv("HOTPATCH_PROOF_FAULT");
    if (!m)
        return;
    if (strcmp(m, "threads") == 0)
        mode = 1;
    else if (strcmp(m, "fork-exec") == 0)
        mode = 2;
    else
        return;
    const char *prefix = getenv("HOTPATCH_PROOF_FAULT_COUNT");
    if (prefix && strlen(prefix) < sizeof count_prefix)
        strcpy(count_prefix, prefix);
    /* Not inherited by what the fault or the server execs. */
    unsetenv("LD_PRELOAD");
    pthread_atfork(NULL, NULL, in_child);
    start();
}
