# A boot sector that waits for a key through INT 16h AH=00h (the firmware's handler halts
# until the key comes), checks that AH=01h then reports no key, and leaves through
# debug-exit with the key's ASCII code; 0x7F if a key was still pending.
        .code16
        .intel_syntax noprefix
        .section .boot, "ax"
        .globl  start
start:
        xor     ax, ax
        mov     ds, ax
        mov     ss, ax
        mov     sp, 0x7C00
        mov     si, 0x7C00 + msg - start
1:      lodsb
        test    al, al
        jz      2f
        mov     ah, 0x0E
        int     0x10
        jmp     1b
2:      xor     ah, ah
        int     0x16
        mov     bl, al
        mov     ah, 0x01
        int     0x16
        mov     al, bl
        jz      3f
        mov     al, 0x7F
3:      out     0xF4, al
msg:    .asciz  "key?\r\n"
