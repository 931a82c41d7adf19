# The built-in demo: banner, the E820 map from fw_cfg, the vCPU count, then halt.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"
        .globl demo
demo:
        call    line_start
        mov     si, offset banner
        call    line_str
        call    line_end

        mov     si, offset e820_file
        call    fw_cfg_find
        jc      no_e820
        cmp     ecx, E820_MAX
        jbe     1f
        mov     ecx, E820_MAX
1:      mov     edi, E820_BUF
        call    fw_cfg_read
        jc      no_e820
        mov     eax, ecx
        xor     edx, edx
        mov     ecx, 20
        div     ecx
        mov     bp, ax                          # entries
        call    line_start
        mov     si, offset e820_hdr
        call    line_str
        call    line_dec
        mov     si, offset e820_hdr2
        call    line_str
        call    line_end
        test    bp, bp
        jz      cpus
        mov     bx, E820_BUF
2:      call    line_start
        mov     si, offset indent
        call    line_str
        mov     eax, es:[bx + 4]
        call    line_hex32
        mov     eax, es:[bx]
        call    line_hex32
        mov     al, '-'
        stosb
        mov     eax, es:[bx]                    # end = addr + size - 1, 64-bit
        mov     edx, es:[bx + 4]
        add     eax, es:[bx + 8]
        adc     edx, es:[bx + 12]
        sub     eax, 1
        sbb     edx, 0
        push    eax
        mov     eax, edx
        call    line_hex32
        pop     eax
        call    line_hex32
        mov     si, offset type_ram
        cmp     dword ptr es:[bx + 16], 1
        je      3f
        mov     si, offset type_reserved
3:      call    line_str
        call    line_end
        add     bx, 20
        dec     bp
        jnz     2b
        jmp     cpus

no_e820:
        mov     si, offset msg_no_e820
        call    puts

cpus:
        call    line_start
        mov     si, offset cpus_msg
        call    line_str
        mov     ax, es:[BOOT_DESC + BD_CPUS]
        call    line_dec
        call    line_end
        call    rtc_line
        mov     si, offset bye
        call    puts
        jmp     halt_forever

# rtc_line: "RTC: 20YY-MM-DD hh:mm:ss" from the CMOS clock, read in its default BCD mode once
# no update is in progress.
rtc_line:
        mov     al, 0x0A
        out     0x70, al
        in      al, 0x71
        test    al, 0x80
        jnz     rtc_line
        call    line_start
        mov     si, offset rtc_msg
        call    line_str
        mov     si, offset rtc_fields
1:      mov     al, [si]                        # register; 0xFF ends the list
        cmp     al, 0xFF
        je      2f
        out     0x70, al
        in      al, 0x71
        call    line_bcd
        mov     al, [si + 1]                    # separator; 0 for none
        test    al, al
        jz      3f
        stosb
3:      add     si, 2
        jmp     1b
2:      jmp     line_end

# line_bcd: append the BCD byte in AL as two digits.
line_bcd:
        mov     ah, al
        shr     al, 4
        add     al, '0'
        stosb
        mov     al, ah
        and     al, 0x0F
        add     al, '0'
        stosb
        ret

        .section .rodata
banner:         .ascii "minipc firmware "
                .include "version.inc"
                .byte 0
e820_file:      .asciz "etc/e820"
e820_hdr:       .asciz "E820 map ("
e820_hdr2:      .asciz " entries):"
indent:         .asciz "  "
type_ram:       .asciz " usable"
type_reserved:  .asciz " reserved"
msg_no_e820:    .asciz "no etc/e820 in fw_cfg\r\n"
cpus_msg:       .asciz "vCPUs: "
bye:            .asciz "demo done, halting\r\n"
rtc_msg:        .asciz "RTC: "
rtc_fields:     .byte 0x32, 0, 0x09, '-', 0x08, '-', 0x07, ' ', 0x04, ':', 0x02, ':', 0x00, 0, 0xFF
