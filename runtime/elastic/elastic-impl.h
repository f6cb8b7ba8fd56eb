/* elastic-impl.h: declarations private to runtime/elastic/ (no other module includes this). */
#ifndef MOE_RUNTIME_ELASTIC_IMPL_H
#define MOE_RUNTIME_ELASTIC_IMPL_H

#include "runtime/elastic/elastic.h"

/* ---------------------------------------------------------------- migration (migrate.c) */

typedef struct moe_migration_s *moe_migration_h;

/* Collective over comm (all ranks, the same plans): lays out `to` for new_plan on this rank (the
 * dense part and the experts it already holds shared with `from`) and posts the
 * point-to-point transfers of the experts it gains or gives, at most `window` incoming experts in
 * flight. `from` stays alive until every rank is done. device_comm (may be NULL): an NCCL
 * communicator over comm's ranks, in the same order, of the migration's own; with it, slots in device
 * memory go GPU to GPU, all posted at once. */
moe_status_t moe_migration_start(const moe_config_t *config, const moe_plan_h old_plan,
                                 const moe_weights_t *from, const moe_plan_h new_plan, int rank,
                                 int window, moe_ctl_h ctl, moe_comm_h device_comm, moe_watch_h watch,
                                 moe_weights_t *to,
                                 moe_migration_h *out);
/* Progress; *done once this rank's sends and receives have completed. */
moe_status_t moe_migration_test(moe_migration_h migration, bool *done);
moe_status_t moe_migration_wait(moe_migration_h migration, moe_watch_h watch);
int64_t moe_migration_bytes_pending(const moe_migration_h migration); /* receives not yet arrived */
int64_t moe_migration_bytes_in(const moe_migration_h migration);      /* all this rank receives */
double moe_migration_seconds(const moe_migration_h migration);        /* from start to done (GPU to GPU: on the device) */
void moe_migration_destroy(moe_migration_h migration);                /* NULL-safe; after done */

#endif
