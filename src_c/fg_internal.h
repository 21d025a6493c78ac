/* fg_internal.h -- helpers shared by the C files, not part of the boundary. */
#ifndef FG_INTERNAL_H
#define FG_INTERNAL_H

#include "fastgrad.h"

/* A fresh slot with one use, or FG_ENOMEM. */
int32_t fg_alloc_node(fg_graph_t *g);
/* Offset of n fresh side-array entries, or FG_ENOMEM. */
int64_t fg_alloc_operands(fg_graph_t *g, int64_t n);

#endif /* FG_INTERNAL_H */
