/* fg_internal.h -- helpers shared by the C files, not part of the boundary. */
#ifndef FG_INTERNAL_H
#define FG_INTERNAL_H

#include "fastgrad.h"

/* A fresh slot with one use, or FG_ENOMEM. */
int32_t fg_alloc_node(fg_graph_t *g);
/* The first of n consecutive fresh slots at top (each with one use), or a
 * negative status. */
int64_t fg_alloc_fresh(fg_graph_t *g, int64_t n);
/* Offset of n fresh side-array entries, or FG_ENOMEM. */
int64_t fg_alloc_operands(fg_graph_t *g, int64_t n);

/* Arity by op code as a table, for the hot loops (fg_op_arity is the
 * exported, bounds-checked version). */
static const signed char FG_ARITY[FG_OP_COUNT] = {
#define FG_ARITY_ENTRY(NAME, str, arity, fwd, da, db, daa, dab, dbb) arity,
    FG_OP_TABLE(FG_ARITY_ENTRY)
#undef FG_ARITY_ENTRY
};

#endif /* FG_INTERNAL_H */
