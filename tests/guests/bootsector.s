# A boot sector, booted by the embedded firmware's INT 19h from --disk: it loads its second
# stage (LBA 1-7) through INT 13h AH=02h, which then checks the BIOS services a boot loader
# uses. The test's image holds sector n filled with the byte n from LBA 8 to 31.
#
# Leaves through debug-exit with 0x10 when every check passed, or 0x20 + the number of the
# failed check. With SPIN=1 it spins after its disk write instead (the test then stops it by
# --timeout or a signal).
        .code16
        .intel_syntax noprefix
        .set    DEBUG_EXIT, 0xF4
        .set    BUF, 0x9000                     # sector buffer
        .set    PACKET, 0x8F00                  # disk address packet / EDD parameters
        .set    E820, 0x8E00
        .set    DRIVE, 0x8DF0                   # the boot drive, as DL gave it
        .set    WRITE_LBA, 20
        .ifndef SPIN
        .set    SPIN, 0
        .endif
        .include "storm.inc"

# The checks' macros use the local label 1; the code between them uses others.
        .macro  check n
        jnc     1f
        mov     al, 0x20 + \n
        jmp     fail
1:
        .endm
        .macro  expect n                        # after a cmp: equal, or check n fails
        je      1f
        mov     al, 0x20 + \n
        jmp     fail
1:
        .endm
        .macro  expect_error n                  # CF=1 from the call, or check n fails
        jc      1f
        mov     al, 0x20 + \n
        jmp     fail
1:
        .endm

        .section .boot, "ax"
        .globl  start
start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        sti
        mov     [DRIVE], dl
        # The second stage: LBA 1 onward (cylinder 0, head 0, sector 2) to 0:7E00.
        mov     ax, offset stage2_sectors
        mov     ah, 0x02
        mov     cx, 0x0002
        xor     dh, dh
        mov     bx, 0x7E00
        int     0x13
        jnc     stage2
        mov     al, 0x21
        out     DEBUG_EXIT, al

        .text
stage2:
        mov     si, offset hello
        call    print
        mov     al, [DRIVE]
        call    print_hex
        mov     si, offset crlf
        call    print

        # INT 10h AH=13h: a string at ES:BP, the cursor moved past it (row 1: after "hello").
        mov     ax, 0x1301
        mov     bx, 0x0007
        mov     cx, offset title_end - title
        mov     dx, 0x0100
        mov     bp, offset title
        int     0x10
        mov     ah, 0x03
        xor     bh, bh
        int     0x10
        cmp     dx, 0x0100 + title_end - title
        expect  2

        # AH=08h: the geometry; a hard disk of one cylinder or a 1.44 MB diskette.
        mov     ah, 0x08
        mov     dl, [DRIVE]
        int     0x13
        check   3
        test    byte ptr [DRIVE], 0x80
        jz      5f
        cmp     cx, 0x003F                      # cylinder 0 is the last, 63 sectors
        expect  4
        cmp     dx, 0x0F01                      # 16 heads, one hard disk
        expect  4
        jmp     2f
5:      cmp     cx, 0x4F12                      # 80 cylinders, 18 sectors
        expect  5
        cmp     dx, 0x0101                      # 2 heads, one diskette drive
        expect  5
        cmp     bl, 4                           # 1.44 MB
        expect  5
2:      xor     ax, ax
        mov     es, ax

        # AH=41h: EDD 3.0 with the extended and EDD functions.
        mov     ah, 0x41
        mov     bx, 0x55AA
        mov     dl, [DRIVE]
        int     0x13
        check   6
        cmp     bx, 0xAA55
        expect  6
        cmp     ah, 0x30
        expect  6
        and     cx, 5
        cmp     cx, 5
        expect  6

        # AH=02h: LBA 8 and 9 (cylinder 0, head 0, sectors 9-10).
        mov     ax, 0x0202
        mov     cx, 0x0009
        xor     dh, dh
        mov     dl, [DRIVE]
        mov     bx, BUF
        int     0x13
        check   7
        cmp     ax, 0x0002
        expect  7
        mov     al, 8
        mov     di, BUF
        call    sector_is
        expect  7
        mov     al, 9
        mov     di, BUF + 512
        call    sector_is
        expect  7

        # AH=42h, 16-byte packet: LBA 10 to 0:BUF.
        mov     eax, 10
        mov     ebx, BUF                        # segment 0
        mov     cl, 16
        mov     ah, 0x42
        call    edd
        check   8
        mov     al, 10
        mov     di, BUF
        call    sector_is
        expect  8

        # AH=42h, 24-byte packet with FFFF:FFFF: LBA 11 to 0x100000, read at FFFF:0010.
        mov     dword ptr [PACKET + 16], 0x100000
        mov     dword ptr [PACKET + 20], 0
        mov     eax, 11
        mov     ebx, 0xFFFFFFFF
        mov     cl, 24
        mov     ah, 0x42
        call    edd
        check   9
        push    es
        mov     ax, 0xFFFF
        mov     es, ax
        mov     al, 11
        mov     di, 0x10
        call    sector_is
        pop     es
        expect  9

        # AH=43h: write 0xA5s to WRITE_LBA, then read them back through CHS.
        mov     di, BUF
        mov     al, 0xA5
        mov     cx, 512
        rep     stosb
        mov     eax, WRITE_LBA
        mov     ebx, BUF
        mov     cl, 16
        mov     ah, 0x43
        call    edd
        check   10
        mov     di, BUF
        xor     al, al
        mov     cx, 512
        rep     stosb
        mov     cx, WRITE_LBA + 1               # hard disk: head 0, 63 sectors a track
        xor     dh, dh
        test    byte ptr [DRIVE], 0x80
        jnz     6f
        mov     cx, WRITE_LBA - 18 + 1          # diskette: 18 sectors a track, head 1
        mov     dh, 1
6:      mov     ax, 0x0201
        mov     dl, [DRIVE]
        mov     bx, BUF
        int     0x13
        check   10
        mov     al, 0xA5
        mov     di, BUF
        call    sector_is
        expect  10
        mov     si, offset wrote
        call    print
        .if     SPIN
2:      jmp     2b
        .endif

        # Errors: past the end (LBA 2^32), another drive, a buffer in the ROM area, a DMA
        # boundary.
        mov     byte ptr [PACKET], 16
        mov     word ptr [PACKET + 2], 1
        mov     dword ptr [PACKET + 4], BUF
        mov     dword ptr [PACKET + 8], 0
        mov     dword ptr [PACKET + 12], 1
        mov     ah, 0x42
        mov     si, PACKET
        mov     dl, [DRIVE]
        int     0x13
        expect_error 11
        cmp     ah, 0x04
        expect  11
        cmp     word ptr [PACKET + 2], 0        # no block moved
        expect  11
        mov     ah, 0x41
        mov     bx, 0x55AA
        mov     dl, 0x81
        int     0x13
        expect_error 12
        mov     ah, 0x08
        mov     dl, 0x81
        int     0x13
        expect_error 12
        xor     ax, ax
        mov     es, ax
        mov     eax, 8
        mov     ebx, 0xF0000000                 # F000:0000
        mov     cl, 16
        mov     ah, 0x42
        call    edd
        expect_error 13
        mov     ax, 0x0202
        mov     cx, 0x0009
        xor     dh, dh
        mov     dl, [DRIVE]
        mov     bx, 0xFF00                      # 0:FF00 + 1 KiB crosses 0x10000
        int     0x13
        expect_error 14
        cmp     ah, 0x09
        expect  14
        mov     ah, 0x01                        # the last status, then cleared
        mov     dl, [DRIVE]
        int     0x13
        cmp     ah, 0x09
        expect  14
        mov     ah, 0x01
        mov     dl, [DRIVE]
        int     0x13
        check   14

        # INT 15h E820: the whole map, RAM at 0 first.
        xor     ebx, ebx
        xor     si, si                          # entries
2:      mov     eax, 0xE820
        mov     edx, 0x534D4150
        mov     ecx, 20
        mov     di, E820
        int     0x15
        check   15
        cmp     eax, 0x534D4150
        expect  15
        test    si, si
        jnz     3f
        cmp     dword ptr [E820], 0
        expect  15
        cmp     dword ptr [E820 + 16], 1
        expect  15
3:      inc     si
        cmp     si, 32
        ja      4f
        test    ebx, ebx
        jnz     2b
4:      cmp     si, 5
        setae   al
        cmp     al, 1
        expect  15

        # INT 15h C0h: the configuration table in the ROM, model FCh.
        mov     ah, 0xC0
        int     0x15
        check   16
        cmp     byte ptr es:[bx + 2], 0xFC
        expect  16
        xor     ax, ax
        mov     es, ax

        # INT 11h/12h: the diskette bit follows the drive; 639 KiB.
        int     0x12
        cmp     ax, 639
        expect  17
        int     0x11
        and     al, 1
        mov     ah, [DRIVE]
        shr     ah, 7
        xor     ah, 1
        cmp     al, ah
        expect  17

        # INT 1Ah: the tick count moves (IRQ 0 at 18.2 Hz).
        xor     ah, ah
        int     0x1A
        mov     si, dx
        mov     cx, 4
2:      hlt
        loop    2b
        xor     ah, ah
        int     0x1A
        cmp     dx, si
        setne   al
        cmp     al, 1
        expect  18

        # INT 16h: no key (ZF=1); a stuffed key is read back.
        mov     ah, 0x01
        int     0x16
        expect  19
        mov     ah, 0x05
        mov     cx, 0x1C0D
        int     0x16
        mov     ah, 0x11
        int     0x16
        cmp     ax, 0x1C0D
        expect  19
        xor     ah, ah
        int     0x16
        cmp     ax, 0x1C0D
        expect  19

        # The service ports from here: unassigned (storm.inc).
        storm_ports
        jnc     2f
        add     al, 0x20 + 20 - 1
        jmp     fail
2:      mov     si, offset passed
        call    print
        mov     al, 0x10
        out     DEBUG_EXIT, al

# fail: print the check's code (AL), leave with it.
fail:
        push    ax
        mov     si, offset failed
        call    print
        pop     ax
        push    ax
        call    print_hex
        mov     si, offset crlf
        call    print
        pop     ax
        out     DEBUG_EXIT, al

# edd: an extended INT 13h call on one block. AH = the function, AL = the LBA, EBX = the
# buffer (segment:offset, or FFFFFFFF for the flat address at PACKET + 16), CL = the
# packet's size.
edd:
        mov     word ptr [PACKET + 2], 1
        push    eax
        movzx   eax, al
        mov     [PACKET + 8], eax
        mov     dword ptr [PACKET + 12], 0
        pop     eax
        mov     [PACKET], cl
        mov     byte ptr [PACKET + 1], 0
        mov     [PACKET + 4], ebx
        mov     si, PACKET
        mov     dl, [DRIVE]
        int     0x13
        ret

# sector_is: ZF=1 when the 512 bytes at ES:DI are all AL.
sector_is:
        mov     cx, 512
        repe    scasb
        ret

# print: the NUL-terminated string at DS:SI through INT 10h AH=0Eh.
print:
        lodsb
        test    al, al
        jz      1f
        mov     ah, 0x0E
        xor     bx, bx
        int     0x10
        jmp     print
1:      ret

# print_hex: AL as two hex digits.
print_hex:
        push    ax
        shr     al, 4
        call    nibble
        pop     ax
        and     al, 0x0F
nibble:
        add     al, '0'
        cmp     al, '9'
        jbe     1f
        add     al, 'a' - '9' - 1
1:      mov     ah, 0x0E
        xor     bx, bx
        int     0x10
        ret

hello:  .asciz  "boot sector: DL="
crlf:   .asciz  "\r\n"
title:  .ascii  "INT 10h AH=13h"
title_end:
wrote:  .asciz  "\r\nwrote LBA 20\r\n"
passed: .asciz  "all checks passed\r\n"
failed: .asciz  "FAIL "
