# The built-in demo: banner, the E820 map and the clock from the BIOS services, the vCPU
# count, then halt. The whole text is built in the line buffer (the VMM's memory map has a
# handful of entries; the buffer, up to E820_BUF, holds hundreds) and printed with one VM
# exit at the end.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"
        .globl demo
demo:
        call    line_start
        mov     si, offset banner
        call    line_str
        call    line_crlf

        # The memory map, as an OS asks for it: INT 15h, AX=E820h.
        mov     si, offset e820_hdr
        call    line_str
        call    line_crlf
        xor     ebx, ebx
2:      mov     eax, 0xE820
        mov     edx, 0x534D4150                 # "SMAP"
        mov     ecx, 20
        push    di
        mov     di, E820_BUF
        int     0x15
        pop     di
        jc      no_e820
        push    ebx
        mov     bx, E820_BUF
        call    e820_line
        pop     ebx
        test    ebx, ebx
        jnz     2b
        jmp     cpus

# e820_line: append the entry at ES:BX (20 bytes; the end address goes after it).
e820_line:
        mov     si, offset indent
        call    line_str
        call    line_hex64                      # start
        mov     al, '-'
        stosb
        mov     eax, es:[bx]                    # end = addr + size - 1, 64-bit
        mov     edx, es:[bx + 4]
        add     eax, es:[bx + 8]
        adc     edx, es:[bx + 12]
        sub     eax, 1
        sbb     edx, 0
        mov     es:[bx + 20], eax
        mov     es:[bx + 24], edx
        add     bx, 20
        call    line_hex64
        sub     bx, 20
        mov     si, offset type_ram
        cmp     dword ptr es:[bx + 16], 1
        je      3f
        mov     si, offset type_reserved
3:      call    line_str
        jmp     line_crlf

no_e820:
        mov     si, offset msg_no_e820
        call    line_str

cpus:
        mov     si, offset cpus_msg
        call    line_str
        mov     ax, es:[BOOT_DESC + BD_CPUS]
        call    line_dec
        call    line_crlf
        call    rtc_line
        mov     si, offset bye
        call    line_str
        call    line_send
        jmp     halt_forever

# rtc_line: append "RTC: CCYY-MM-DD hh:mm:ss" from INT 1Ah (date: AH=04h, time: AH=02h).
rtc_line:
        mov     si, offset rtc_msg
        call    line_str
        mov     ah, 0x04
        int     0x1A
        mov     al, ch
        call    line_byte
        mov     al, cl
        call    line_byte
        mov     al, '-'
        stosb
        mov     al, dh
        call    line_byte
        mov     al, '-'
        stosb
        mov     al, dl
        call    line_byte
        mov     al, ' '
        stosb
        mov     ah, 0x02
        int     0x1A
        mov     al, ch
        call    line_byte
        mov     al, ':'
        stosb
        mov     al, cl
        call    line_byte
        mov     al, ':'
        stosb
        mov     al, dh
        call    line_byte
        jmp     line_crlf

        .section .rodata
banner:         .byte   9f - 8f                 # lstr, with the version from build.rs
8:              .ascii  "minipc firmware "
                .include "version.inc"
9:
        lstr    e820_hdr, "E820 map (INT 15h):"
        lstr    indent, "  "
        lstr    type_ram, " usable"
        lstr    type_reserved, " reserved"
        lstr    msg_no_e820, "INT 15h E820 failed\r\n"
        lstr    cpus_msg, "vCPUs: "
        lstr    bye, "demo done, halting\r\n"
        lstr    rtc_msg, "RTC: "
