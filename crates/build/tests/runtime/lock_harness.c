/* Drives the shadow runtime's lock through the two cases that deadlocked:
 * a call re-entered on the thread that holds the lock (a signal handler),
 * and a child forked while another thread held it. Exit status says which
 * check failed; alarm() turns a deadlock into a failure. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shadow.c"

static volatile int stop;

static void *holder(void *out)
{
	*(volatile pid_t *)out = (pid_t)syscall(SYS_gettid);
	while (!stop)
		usleep(1000);
	return 0;
}

static void *short_lived(void *out)
{
	*(pid_t *)out = (pid_t)syscall(SYS_gettid);
	return 0;
}

int main(void)
{
	static int obj;
	alarm(20);
	hotpatch_shadow_root.activation = 1; /* live, nothing to adopt */

	/* Re-entry: this thread holds the lock; the call must not wait for itself. */
	hotpatch_shadow_root.lock = (uint32_t)syscall(SYS_gettid);
	if (hotpatch_shadow_get_or_alloc(&obj, 1, sizeof(int)) != 0)
		return 10;
	hotpatch_shadow_root.lock = 0;

	/* A holder that is no longer a thread of the process: taken over. */
	pid_t gone = 0;
	pthread_t t;
	pthread_create(&t, 0, short_lived, &gone);
	pthread_join(t, 0);
	hotpatch_shadow_root.lock = (uint32_t)gone;
	int *p = hotpatch_shadow_get_or_alloc(&obj, 1, sizeof(int));
	if (!p)
		return 11;
	*p = 42;
	if (hotpatch_shadow_get(&obj, 1) != p || hotpatch_shadow_root.lock != 0)
		return 12;

	/* fork() while a live thread holds the lock: the child's first call
	 * takes it over and finds the data; the parent's holder keeps it. */
	volatile pid_t busy = 0;
	pthread_create(&t, 0, holder, (void *)&busy);
	while (!busy)
		usleep(100);
	hotpatch_shadow_root.lock = (uint32_t)busy;
	pid_t child = fork();
	if (child == 0) {
		int *q = hotpatch_shadow_get(&obj, 1);
		_exit(q == p && *q == 42 ? 0 : 13);
	}
	int status = 0;
	waitpid(child, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return WIFEXITED(status) ? WEXITSTATUS(status) : 14;
	if (hotpatch_shadow_root.lock != (uint32_t)busy)
		return 15;
	hotpatch_shadow_root.lock = 0;
	stop = 1;
	pthread_join(t, 0);
	puts("ok");
	return 0;
}
