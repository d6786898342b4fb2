/*
 * libcheckpt-nouring.so: loaded with LD_PRELOAD, makes io_uring_setup fail for this process so
 * libuv (Node 22 and later) falls back to epoll, which CRIU can checkpoint. libuv reaches the kernel
 * through glibc's syscall(), so interposing that one function is enough. Unlike a seccomp
 * filter it leaves ptrace alone: CRIU must suspend seccomp to dump, which it may not do when
 * it was itself started under the filter.
 *
 * The interposer must be invisible to every other caller: it is the kernel's syscall instruction
 * with glibc's calling convention and errno rule, and nothing else. No dlsym (it clobbered the
 * vector registers programs keep live across the call: CRIU's sse00 and fpu01 failed), no libc
 * call but the errno location, and built with -mgeneral-regs-only so the compiler adds none.
 */
#define _GNU_SOURCE
#include <errno.h>

#if !defined(__x86_64__)
#error "libcheckpt-nouring.so is written for x86-64"
#endif

#define NR_IO_URING_SETUP 425

/* The error path of syscall(): glibc's rule, -4095..-1 from the kernel is -1 with errno set. */
__attribute__((visibility("hidden"), used)) long checkpt_nouring_fail(long neg) {
  errno = (int)-neg;
  return -1;
}

/*
 * long syscall(long nr, ...): the number in rdi and up to six arguments in rsi, rdx, rcx, r8, r9
 * and the stack, moved to the kernel's registers (rax, rdi, rsi, rdx, r10, r8, r9) as glibc does.
 */
__asm__(".text\n"
        ".globl syscall\n"
        ".type syscall, @function\n"
        "syscall:\n"
        "  cmpq $425, %rdi\n"
        "  je 2f\n"
        "  movq %rdi, %rax\n"
        "  movq %rsi, %rdi\n"
        "  movq %rdx, %rsi\n"
        "  movq %rcx, %rdx\n"
        "  movq %r8, %r10\n"
        "  movq %r9, %r8\n"
        "  movq 8(%rsp), %r9\n"
        "  syscall\n"
        "  cmpq $-4095, %rax\n"
        "  jae 1f\n"
        "  ret\n"
        "2:\n"
        "  movq $-38, %rax\n" /* -ENOSYS: libuv falls back to epoll */
        "1:\n"
        "  movq %rax, %rdi\n"
        "  jmp checkpt_nouring_fail\n"
        ".size syscall, .-syscall\n");

_Static_assert(NR_IO_URING_SETUP == 425, "the assembly above compares with 425");
_Static_assert(ENOSYS == 38, "the assembly above returns -38");
