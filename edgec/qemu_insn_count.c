/* A QEMU TCG plugin that counts the guest instructions a program executes (edgec/insns.py).
 *
 *   qemu-aarch64 -plugin ./qemu_insn_count.so ./program ...   ->  "edgec-insns N" on stderr at exit
 *
 * Debian's qemu-user is built with plugin support but ships no plugins, so edgec compiles this one (into
 * its cache folder). It declares the few functions of QEMU's stable plugin API it uses (API version 1,
 * QEMU 4.2 and later): at translation each block gets an inline "add its instruction count to a counter" op, so
 * the count costs one add per executed block and is exact and repeatable. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_info_t;

#define EC_EXPORT __attribute__((visibility("default")))
#define QEMU_PLUGIN_INLINE_ADD_U64 0

EC_EXPORT int qemu_plugin_version = 1;

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

static uint64_t insns;  /* one counter: the programs counted run their model on one thread */

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *user) {
    (void)id;
    (void)user;
    fprintf(stderr, "edgec-insns %llu\n", (unsigned long long)insns);
}

EC_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info, int argc, char **argv) {
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
