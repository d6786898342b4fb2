#ifndef CHECKPT_NFT_LOCK_H
#define CHECKPT_NFT_LOCK_H
/*
 * `checkpt-helper init --lock-table 'inet CRIU-<id>' --lock-method-at OFFSET:INVENTORY`: before a
 * restore on the host's network, marks the dump's network lock "skip" in inventory.img (the byte
 * at OFFSET) when the table is gone, so that `criu restore` does not spend 13-18 ms asking
 * libnftables to delete a table that is not there while the restored program waits.
 */
void skip_lock_if_gone(const char *table, const char *method_at);
#endif
