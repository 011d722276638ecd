/*
 * hotpatch.h: what a hotpatch's own C code may call or define.
 *
 * Shadow variables: state a hotpatch adds to objects that already exist in the
 * running process (a field a struct did not have), kept in a side table keyed
 * by (object address, id) instead of changing the object's layout, which a
 * running process cannot take.
 *
 *   void *hotpatch_shadow_get(const void *obj, unsigned long id);
 *       The shadow data attached to obj under id, or NULL.
 *   void *hotpatch_shadow_get_or_alloc(const void *obj, unsigned long id, unsigned long size);
 *       The same, attaching size zeroed bytes (16-byte aligned) on first use.
 *       NULL when the table is full, when size differs from the size the data
 *       was first attached with, or before the hotpatch is live (in a pre
 *       callback).
 *   void hotpatch_shadow_free(const void *obj, unsigned long id);
 *       Detaches and frees it (call it where the object is freed).
 *   void hotpatch_shadow_free_all(unsigned long id);
 *       Frees the data of every object under id (e.g. in a pre-rollback callback).
 *
 * The table lives in the patch region: its memory is an arena of the region,
 * then anonymous memory the runtime maps itself (up to 64 MiB), never the
 * process's malloc, so the functions may be called from any thread,
 * also where malloc's locks are held. Called from a signal handler that
 * interrupted a call of the same thread they answer NULL (do nothing)
 * instead of waiting for themselves; in a child forked while another
 * thread was inside one, the first call takes the table over. A higher level adopts the table of
 * the level it replaces: state added by level n is found by level n+1. A
 * rollback drops the table (a later apply starts empty).
 *
 * Callbacks: a hotpatch may define any of these functions; the engine calls
 * them inside the process, in one thread it borrows while the others keep
 * running (so they must not wait for something the borrowed thread itself
 * holds; treat them like a signal handler of that thread).
 *
 *   int  hotpatch_pre_apply(void);     non-zero refuses the apply: nothing switches
 *   void hotpatch_post_apply(void);    once the new code is live
 *   int  hotpatch_pre_rollback(void);  non-zero refuses the rollback
 *   void hotpatch_post_rollback(void); once the baseline code is back
 *
 * A level that replaces a lower one runs its own apply callbacks; the lower
 * level's rollback callbacks do not run (the higher level is cumulative).
 */
#ifndef HOTPATCH_H
#define HOTPATCH_H

#ifdef __cplusplus
extern "C" {
#endif

/* Weak: the program built with the fix (which `hotpatch build` compiles but
 * never runs) still links without the runtime; the payload gets it. */
#ifndef HOTPATCH_RUNTIME
#define HOTPATCH_RUNTIME __attribute__((weak))
#endif

HOTPATCH_RUNTIME void *hotpatch_shadow_get(const void *obj, unsigned long id);
HOTPATCH_RUNTIME void *hotpatch_shadow_get_or_alloc(const void *obj, unsigned long id, unsigned long size);
HOTPATCH_RUNTIME void hotpatch_shadow_free(const void *obj, unsigned long id);
HOTPATCH_RUNTIME void hotpatch_shadow_free_all(unsigned long id);

int hotpatch_pre_apply(void);
void hotpatch_post_apply(void);
int hotpatch_pre_rollback(void);
void hotpatch_post_rollback(void);

#ifdef __cplusplus
}
#endif

#endif
