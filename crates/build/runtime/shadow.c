/*
 * The shadow variable runtime, linked by the builder into every payload that
 * calls the API of include/hotpatch.h. Self-contained on purpose: it calls
 * nothing of the process (no malloc, no libc locks), so it cannot deadlock
 * with the process's own locks, and runs the same in any process.
 *
 * The engine knows the layout of the root's first words (crates/engine/src/
 * shadow.rs): it finds the root by the symbol hotpatch_shadow_root, records
 * it in the region header, and writes `activation` in the transition's stop:
 * 1 when there is nothing to adopt, else the address of the root of the
 * level being replaced, whose table is adopted on first use. Until then
 * (activation 0) every call answers NULL: the hotpatch is not live yet.
 */
#include <stddef.h>
#include <stdint.h>
/* The runtime defines the API: strong definitions. */
#define HOTPATCH_RUNTIME
#include "hotpatch.h"

#define ROOT_MAGIC 0x574f444148535048ull /* "HPSHADOW" */
#define ROOT_VERSION 1u
#define BUCKETS 256u
/* In the region (its memfd holds these bytes whether used or not): small. */
#define ARENA_BYTES (64u << 10)
/* Beyond it, anonymous memory mapped on demand (only touched pages cost). */
#define CHUNK_BYTES (1ul << 20)
#define MAX_GROWN (64ul << 20)
#define ALIGN 16u

struct node {
	struct node *next;
	const void *obj;
	unsigned long id;
	unsigned long size;     /* as asked for */
	unsigned long capacity; /* of data[], a multiple of ALIGN */
	unsigned long pad;
	unsigned char data[];
};

struct root {
	uint64_t magic;             /* 0 */
	uint32_t version;           /* 8 */
	uint32_t lock;              /* 12 */
	uint64_t activation;        /* 16: written by the engine */
	struct root *forward;       /* 24: the successor that adopted this table */
	unsigned char *arena_next;  /* 32 */
	unsigned char *arena_end;   /* 40 */
	uint64_t live_count;        /* 48 */
	uint64_t live_bytes;        /* 56 */
	struct node *free_list;     /* 64 */
	struct node *buckets[BUCKETS];
	unsigned long grown;        /* bytes mapped beyond the arena */
};

static unsigned char arena[ARENA_BYTES] __attribute__((aligned(ALIGN)));

__attribute__((visibility("hidden"))) struct root hotpatch_shadow_root = {
	.magic = ROOT_MAGIC,
	.version = ROOT_VERSION,
	.arena_next = arena,
	.arena_end = arena + ARENA_BYTES,
};

static void cpu_relax(unsigned spins)
{
	if (spins % 1024 == 1023) {
		/* Long wait: the holder may be descheduled on this core. */
		long ret;
		__asm__ volatile("syscall" : "=a"(ret) : "a"(24 /* sched_yield */) : "rcx", "r11", "memory");
	} else {
		__builtin_ia32_pause();
	}
}

static long syscall3(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static uint32_t this_thread(void)
{
	return (uint32_t)syscall3(186 /* gettid */, 0, 0, 0);
}

/* Whether `tid` is no thread of this process: after fork() the child has
 * only the forking thread, and a lock another thread held at that moment
 * names a thread of the parent. */
static int no_such_thread(uint32_t tid)
{
	long pid = syscall3(39 /* getpid */, 0, 0, 0);
	return syscall3(234 /* tgkill */, pid, tid, 0) == -3 /* ESRCH */;
}

/* Takes r's lock, which holds its holder's thread id. 0 when it cannot be
 * taken without deadlock: this very thread holds it (a signal handler that
 * interrupted a call of the API). A lock whose holder is no thread of this
 * process (a child forked while a parent's thread held it) is taken over:
 * every change of the table is published by one store, so what the holder
 * left half done is at worst memory not reused. */
static int lock(struct root *r)
{
	uint32_t me = this_thread();
	unsigned spins = 0;
	for (;;) {
		uint32_t holder = 0;
		if (__atomic_compare_exchange_n(&r->lock, &holder, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 1;
		if (holder == me)
			return 0;
		if (spins % 1024 == 1023 && no_such_thread(holder) &&
		    __atomic_compare_exchange_n(&r->lock, &holder, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 1;
		cpu_relax(spins++);
	}
}

static void unlock(struct root *r)
{
	__atomic_store_n(&r->lock, 0, __ATOMIC_RELEASE);
}

static int valid(const struct root *r)
{
	return r && r->magic == ROOT_MAGIC && r->version == ROOT_VERSION;
}

/* Takes over the table of the level this one replaced (called with r locked;
 * locks are always taken newer before older, so two levels never wait on
 * each other). */
static void adopt(struct root *r)
{
	struct root *prev = (struct root *)(uintptr_t)r->activation;
	r->activation = 1;
	if (!valid(prev) || prev == r || !lock(prev))
		return;
	if (prev->forward == 0 && prev->activation != 0) {
		if (prev->activation != 1)
			adopt(prev);
		for (unsigned i = 0; i < BUCKETS; i++)
			r->buckets[i] = prev->buckets[i];
		r->free_list = prev->free_list;
		r->live_count = prev->live_count;
		r->live_bytes = prev->live_bytes;
		r->grown += prev->grown;
		/* Code of the replaced level still reachable (a stored pointer to
		 * one of its functions) follows this to the one live table. */
		__atomic_store_n(&prev->forward, r, __ATOMIC_RELEASE);
	}
	unlock(prev);
}

/* The live table, locked; NULL before the hotpatch is live, or when this
 * thread already holds it (re-entered from a signal handler). */
static struct root *enter(void)
{
	struct root *r = &hotpatch_shadow_root;
	for (;;) {
		if (!lock(r))
			return 0;
		struct root *next = r->forward;
		if (next == 0)
			break;
		unlock(r);
		r = next;
	}
	if (r->activation == 0) {
		unlock(r);
		return 0;
	}
	if (r->activation != 1)
		adopt(r);
	return r;
}

static unsigned bucket(const void *obj, unsigned long id)
{
	uint64_t h = (uint64_t)(uintptr_t)obj * 0x9e3779b97f4a7c15ull;
	h ^= id * 0xc2b2ae3d27d4eb4full;
	return (unsigned)(h >> 56) % BUCKETS;
}

static struct node **find(struct root *r, const void *obj, unsigned long id)
{
	struct node **at = &r->buckets[bucket(obj, id)];
	while (*at && ((*at)->obj != obj || (*at)->id != id))
		at = &(*at)->next;
	return at;
}

/* A fresh chunk of at least `need` bytes from the kernel (raw mmap: no libc,
 * whose state is the process's); 0 when refused or past MAX_GROWN. */
static int grow(struct root *r, unsigned long need)
{
	unsigned long len = need > CHUNK_BYTES ? (need + 4095) & ~4095ul : CHUNK_BYTES;
	if (len < need || r->grown + len > MAX_GROWN)
		return 0;
	register long r10 __asm__("r10") = 0x22; /* MAP_PRIVATE | MAP_ANONYMOUS */
	register long r8 __asm__("r8") = -1;
	register long r9 __asm__("r9") = 0;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(9 /* mmap */), "D"(0), "S"(len), "d"(3 /* PROT_READ | PROT_WRITE */), "r"(r10), "r"(r8),
			   "r"(r9)
			 : "rcx", "r11", "memory");
	if (ret < 0 && ret > -4096)
		return 0;
	r->grown += len;
	r->arena_next = (unsigned char *)ret;
	r->arena_end = (unsigned char *)ret + len;
	return 1;
}

static struct node *allocate(struct root *r, unsigned long size)
{
	unsigned long capacity = (size + ALIGN - 1) / ALIGN * ALIGN;
	if (capacity < size)
		return 0;
	for (struct node **at = &r->free_list; *at; at = &(*at)->next) {
		if ((*at)->capacity >= capacity) {
			struct node *n = *at;
			*at = n->next;
			return n;
		}
	}
	unsigned long need = sizeof(struct node) + capacity;
	if (need < capacity)
		return 0;
	if ((unsigned long)(r->arena_end - r->arena_next) < need && !grow(r, need))
		return 0;
	struct node *n = (struct node *)r->arena_next;
	r->arena_next += need;
	n->capacity = capacity;
	return n;
}

void *hotpatch_shadow_get(const void *obj, unsigned long id)
{
	struct root *r = enter();
	if (!r)
		return 0;
	struct node *n = *find(r, obj, id);
	unlock(r);
	return n ? n->data : 0;
}

void *hotpatch_shadow_get_or_alloc(const void *obj, unsigned long id, unsigned long size)
{
	struct root *r = enter();
	if (!r)
		return 0;
	struct node **at = find(r, obj, id);
	struct node *n = *at;
	if (n) {
		unlock(r);
		return n->size == size ? n->data : 0;
	}
	n = allocate(r, size);
	if (n) {
		volatile unsigned char *d = n->data;
		for (unsigned long i = 0; i < n->capacity; i++)
			d[i] = 0;
		n->obj = obj;
		n->id = id;
		n->size = size;
		n->next = 0;
		*at = n;
		r->live_count++;
		r->live_bytes += size;
	}
	unlock(r);
	return n ? n->data : 0;
}

static void release(struct root *r, struct node **at)
{
	struct node *n = *at;
	*at = n->next;
	r->live_count--;
	r->live_bytes -= n->size;
	n->next = r->free_list;
	r->free_list = n;
}

void hotpatch_shadow_free(const void *obj, unsigned long id)
{
	struct root *r = enter();
	if (!r)
		return;
	struct node **at = find(r, obj, id);
	if (*at)
		release(r, at);
	unlock(r);
}

void hotpatch_shadow_free_all(unsigned long id)
{
	struct root *r = enter();
	if (!r)
		return;
	for (unsigned i = 0; i < BUCKETS; i++) {
		struct node **at = &r->buckets[i];
		while (*at) {
			if ((*at)->id == id)
				release(r, at);
			else
				at = &(*at)->next;
		}
	}
	unlock(r);
}
