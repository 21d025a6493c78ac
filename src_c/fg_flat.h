/* fg_flat.h -- a graph's nodes as flat arrays, for pickling and copying Values
 * (docs/design.md, "Pickle and copy").  Plain C, like fastgrad.h.
 *
 * A dump numbers the nodes it writes 0, 1, 2, ... (dump indices), parents
 * before children.  The nodes one call writes are a *flat record* in one byte
 * buffer, n nodes and m n-ary operand entries, in sections read and written
 * with memcpy (the buffer has no alignment):
 *   cst, val, grad  double[n]   the node's constant slot, value, gradient
 *   ocst            double[m]   n-ary operand constants
 *   a, b            int32[n]    arity 1/2: the parents' dump indices; n-ary
 *                               and USER: a 0, b the operand count
 *   opnd            int32[m]    n-ary operands' dump indices (-1: the constant),
 *                               the nodes' runs one after another
 *   op              uint8[n]    FG_OP_* code
 */
#ifndef FG_FLAT_H
#define FG_FLAT_H

#include "fastgrad.h"

#define FG_FLAT_NODE_BYTES 33   /* 3 doubles, 2 int32, 1 byte */
#define FG_FLAT_OPND_BYTES 12   /* 1 double, 1 int32 */

/* slot -> dump index, open addressing (keys >= 0; -1 is empty). */
typedef struct {
    int32_t *key;
    int32_t *val;
    int64_t  cap;     /* a power of 2, or 0 */
    int64_t  n;
} fg_slotmap_t;

/* The dump index of slot, or -1. */
int32_t fg_slotmap_get(const fg_slotmap_t *m, int32_t slot);
void    fg_slotmap_free(fg_slotmap_t *m);

/* Collects the nodes root depends on (root included) that are not in map yet,
 * with an iterative depth-first walk over the arrays (any depth): they get
 * the dump indices base, base + 1, ... (parents first), go into map, and get
 * one more use each (the dump holds them; the glue drops these uses when it
 * drops the map).  *order (malloc'd, the caller frees it) gets their slots
 * in dump order, *nopnd their n-ary operand count.  Returns how many, or
 * FG_ENOMEM (then nothing was added). */
int64_t fg_flat_collect(fg_graph_t *g, int32_t root, fg_slotmap_t *map, int64_t base,
                        int32_t **order, int64_t *nopnd);

/* Writes the n nodes of order (from fg_flat_collect, with the same map) as a
 * flat record into buf (n * FG_FLAT_NODE_BYTES + nopnd * FG_FLAT_OPND_BYTES). */
void    fg_flat_write(const fg_graph_t *g, const int32_t *order, int64_t n, int64_t nopnd,
                      const fg_slotmap_t *map, unsigned char *buf);

/* Checks a flat record from outside: every op code one a graph node can have,
 * every parent a dump index below its child's (the record's first node is
 * dump index base), n-ary counts that fill the operand section exactly, whole
 * DOT pairs, USER nodes with at least one parent and no constants.  FG_OK, or
 * FG_EINVAL with *bad the first bad node (its position in the record). */
int     fg_flat_check(const unsigned char *buf, int64_t n, int64_t nopnd, int64_t base,
                      int64_t *bad);

/* Builds a checked flat record into g: node j of the record becomes slot
 * slots[base + j] (the caller sized slots to base + n); dump indices below
 * base are read from slots[].  Each new node starts with one use (the
 * caller's) and takes the value and gradient recorded, not recomputed.
 * Returns FG_OK or a status; *done counts the nodes made either way. */
int     fg_flat_build(fg_graph_t *g, const unsigned char *buf, int64_t n, int64_t nopnd,
                      int32_t *slots, int64_t base, int64_t *done);

#endif
