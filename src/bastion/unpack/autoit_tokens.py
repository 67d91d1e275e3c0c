"""EA06 scripts back to text: AutoIt v3.2+ compiles a script to a token stream, which ClamAV turns back
into text before scanning it (``autoit.c``), and so does Bastion, to the byte.

The stream is a u32 line count, then tokens, each an op byte and its operand (integers little-endian):

==========  =================================================================================
op          operand, and the text it becomes
==========  =================================================================================
0x00        u32 keyword number: ``KEYWORDS[n]`` and a space
0x01        u32 function number: ``FUNCTIONS[n]`` and a space
0x05        u32: ``0x%08x`` and a space
0x10        u64: ``0x%016x`` and a space
0x20        a double: C's ``%g`` and a space
0x30-0x37   u32 character count n, then n UTF-16 characters, each XORed with n's low two bytes:
            the characters (narrowed to bytes as ClamAV's ``u2a`` does), after a prefix (``@``
            macro, ``$`` variable, ``.`` object, ``"`` string) and with a closing ``"`` for a
            string; a space after all but 0x34 (a user function name)
0x40-0x58   none: an operator (``OPERATORS``) and a space
0x7F        none: end of a line (a newline); the text ends after as many lines as counted
==========  =================================================================================

Anything else, or an operand cut short, ends the text where it is (ClamAV scans that part).  Where
ClamAV's checks are stricter than the format (an operand that ends exactly at the end of the data is
refused), Bastion's are the same, so a damaged script gives the same text.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from bastion.unpack.autoit_crypt import xor

# keyword numbers, from 0 (AutoIt's own numbering; 0 is unused)
KEYWORDS = tuple(
    b"UNKNOWN_0 AND OR NOT IF THEN ELSE ELSEIF ENDIF WHILE WEND DO UNTIL FOR NEXT TO STEP IN EXITLOOP "
    b"CONTINUELOOP SELECT CASE ENDSELECT SWITCH ENDSWITCH CONTINUECASE DIM REDIM LOCAL GLOBAL CONST STATIC "
    b"FUNC ENDFUNC RETURN EXIT BYREF WITH ENDWITH TRUE FALSE DEFAULT NULL VOLATILE ENUM".split())
# built-in function numbers, from 0
FUNCTIONS = tuple((
    b"ABS ACOS ADLIBREGISTER ADLIBUNREGISTER ASC ASCW ASIN ASSIGN ATAN AUTOITSETOPTION AUTOITWINGETTITLE "
    b"AUTOITWINSETTITLE BEEP BINARY BINARYLEN BINARYMID BINARYTOSTRING BITAND BITNOT BITOR BITROTATE "
    b"BITSHIFT BITXOR BLOCKINPUT BREAK CALL CDTRAY CEILING CHR CHRW CLIPGET CLIPPUT CONSOLEREAD "
    b"CONSOLEWRITE CONSOLEWRITEERROR CONTROLCLICK CONTROLCOMMAND CONTROLDISABLE CONTROLENABLE CONTROLFOCUS "
    b"CONTROLGETFOCUS CONTROLGETHANDLE CONTROLGETPOS CONTROLGETTEXT CONTROLHIDE CONTROLLISTVIEW "
    b"CONTROLMOVE CONTROLSEND CONTROLSETTEXT CONTROLSHOW CONTROLTREEVIEW COS DEC DIRCOPY DIRCREATE "
    b"DIRGETSIZE DIRMOVE DIRREMOVE DLLCALL DLLCALLADDRESS DLLCALLBACKFREE DLLCALLBACKGETPTR "
    b"DLLCALLBACKREGISTER DLLCLOSE DLLOPEN DLLSTRUCTCREATE DLLSTRUCTGETDATA DLLSTRUCTGETPTR "
    b"DLLSTRUCTGETSIZE DLLSTRUCTSETDATA DRIVEGETDRIVE DRIVEGETFILESYSTEM DRIVEGETLABEL DRIVEGETSERIAL "
    b"DRIVEGETTYPE DRIVEMAPADD DRIVEMAPDEL DRIVEMAPGET DRIVESETLABEL DRIVESPACEFREE DRIVESPACETOTAL "
    b"DRIVESTATUS DUMMYSPEEDTEST ENVGET ENVSET ENVUPDATE EVAL EXECUTE EXP FILECHANGEDIR FILECLOSE FILECOPY "
    b"FILECREATENTFSLINK FILECREATESHORTCUT FILEDELETE FILEEXISTS FILEFINDFIRSTFILE FILEFINDNEXTFILE "
    b"FILEFLUSH FILEGETATTRIB FILEGETENCODING FILEGETLONGNAME FILEGETPOS FILEGETSHORTCUT FILEGETSHORTNAME "
    b"FILEGETSIZE FILEGETTIME FILEGETVERSION FILEINSTALL FILEMOVE FILEOPEN FILEOPENDIALOG FILEREAD "
    b"FILEREADLINE FILEREADTOARRAY FILERECYCLE FILERECYCLEEMPTY FILESAVEDIALOG FILESELECTFOLDER "
    b"FILESETATTRIB FILESETEND FILESETPOS FILESETTIME FILEWRITE FILEWRITELINE FLOOR FTPSETPROXY FUNCNAME "
    b"GUICREATE GUICTRLCREATEAVI GUICTRLCREATEBUTTON GUICTRLCREATECHECKBOX GUICTRLCREATECOMBO "
    b"GUICTRLCREATECONTEXTMENU GUICTRLCREATEDATE GUICTRLCREATEDUMMY GUICTRLCREATEEDIT GUICTRLCREATEGRAPHIC "
    b"GUICTRLCREATEGROUP GUICTRLCREATEICON GUICTRLCREATEINPUT GUICTRLCREATELABEL GUICTRLCREATELIST "
    b"GUICTRLCREATELISTVIEW GUICTRLCREATELISTVIEWITEM GUICTRLCREATEMENU GUICTRLCREATEMENUITEM "
    b"GUICTRLCREATEMONTHCAL GUICTRLCREATEOBJ GUICTRLCREATEPIC GUICTRLCREATEPROGRESS GUICTRLCREATERADIO "
    b"GUICTRLCREATESLIDER GUICTRLCREATETAB GUICTRLCREATETABITEM GUICTRLCREATETREEVIEW "
    b"GUICTRLCREATETREEVIEWITEM GUICTRLCREATEUPDOWN GUICTRLDELETE GUICTRLGETHANDLE GUICTRLGETSTATE "
    b"GUICTRLREAD GUICTRLRECVMSG GUICTRLREGISTERLISTVIEWSORT GUICTRLSENDMSG GUICTRLSENDTODUMMY "
    b"GUICTRLSETBKCOLOR GUICTRLSETCOLOR GUICTRLSETCURSOR GUICTRLSETDATA GUICTRLSETDEFBKCOLOR "
    b"GUICTRLSETDEFCOLOR GUICTRLSETFONT GUICTRLSETGRAPHIC GUICTRLSETIMAGE GUICTRLSETLIMIT "
    b"GUICTRLSETONEVENT GUICTRLSETPOS GUICTRLSETRESIZING GUICTRLSETSTATE GUICTRLSETSTYLE GUICTRLSETTIP "
    b"GUIDELETE GUIGETCURSORINFO GUIGETMSG GUIGETSTYLE GUIREGISTERMSG GUISETACCELERATORS GUISETBKCOLOR "
    b"GUISETCOORD GUISETCURSOR GUISETFONT GUISETHELP GUISETICON GUISETONEVENT GUISETSTATE GUISETSTYLE "
    b"GUISTARTGROUP GUISWITCH HEX HOTKEYSET HTTPSETPROXY HTTPSETUSERAGENT HWND INETCLOSE INETGET "
    b"INETGETINFO INETGETSIZE INETREAD INIDELETE INIREAD INIREADSECTION INIREADSECTIONNAMES "
    b"INIRENAMESECTION INIWRITE INIWRITESECTION INPUTBOX INT ISADMIN ISARRAY ISBINARY ISBOOL ISDECLARED "
    b"ISDLLSTRUCT ISFLOAT ISFUNC ISHWND ISINT ISKEYWORD ISMAP ISNUMBER ISOBJ ISPTR ISSTRING LOG MAPAPPEND "
    b"MAPEXISTS MAPKEYS MAPREMOVE MEMGETSTATS MOD MOUSECLICK MOUSECLICKDRAG MOUSEDOWN MOUSEGETCURSOR "
    b"MOUSEGETPOS MOUSEMOVE MOUSEUP MOUSEWHEEL MSGBOX NUMBER OBJCREATE OBJCREATEINTERFACE OBJEVENT OBJGET "
    b"OBJNAME ONAUTOITEXITREGISTER ONAUTOITEXITUNREGISTER OPT PING PIXELCHECKSUM PIXELGETCOLOR PIXELSEARCH "
    b"PROCESSCLOSE PROCESSEXISTS PROCESSGETSTATS PROCESSLIST PROCESSSETPRIORITY PROCESSWAIT "
    b"PROCESSWAITCLOSE PROGRESSOFF PROGRESSON PROGRESSSET PTR RANDOM REGDELETE REGENUMKEY REGENUMVAL "
    b"REGREAD REGWRITE ROUND RUN RUNAS RUNASWAIT RUNWAIT SEND SENDKEEPACTIVE SETERROR SETEXTENDED "
    b"SHELLEXECUTE SHELLEXECUTEWAIT SHUTDOWN SIN SLEEP SOUNDPLAY SOUNDSETWAVEVOLUME SPLASHIMAGEON "
    b"SPLASHOFF SPLASHTEXTON SQRT SRANDOM STATUSBARGETTEXT STDERRREAD STDINWRITE STDIOCLOSE STDOUTREAD "
    b"STRING STRINGADDCR STRINGCOMPARE STRINGFORMAT STRINGFROMASCIIARRAY STRINGINSTR STRINGISALNUM "
    b"STRINGISALPHA STRINGISASCII STRINGISDIGIT STRINGISFLOAT STRINGISINT STRINGISLOWER STRINGISSPACE "
    b"STRINGISUPPER STRINGISXDIGIT STRINGLEFT STRINGLEN STRINGLOWER STRINGMID STRINGREGEXP "
    b"STRINGREGEXPREPLACE STRINGREPLACE STRINGREVERSE STRINGRIGHT STRINGSPLIT STRINGSTRIPCR STRINGSTRIPWS "
    b"STRINGTOASCIIARRAY STRINGTOBINARY STRINGTRIMLEFT STRINGTRIMRIGHT STRINGUPPER TAN TCPACCEPT "
    b"TCPCLOSESOCKET TCPCONNECT TCPLISTEN TCPNAMETOIP TCPRECV TCPSEND TCPSHUTDOWN TCPSTARTUP TIMERDIFF "
    b"TIMERINIT TOOLTIP TRAYCREATEITEM TRAYCREATEMENU TRAYGETMSG TRAYITEMDELETE TRAYITEMGETHANDLE "
    b"TRAYITEMGETSTATE TRAYITEMGETTEXT TRAYITEMSETONEVENT TRAYITEMSETSTATE TRAYITEMSETTEXT TRAYSETCLICK "
    b"TRAYSETICON TRAYSETONEVENT TRAYSETPAUSEICON TRAYSETSTATE TRAYSETTOOLTIP TRAYTIP UBOUND UDPBIND "
    b"UDPCLOSESOCKET UDPOPEN UDPRECV UDPSEND UDPSHUTDOWN UDPSTARTUP VARGETTYPE WINACTIVATE WINACTIVE "
    b"WINCLOSE WINEXISTS WINFLASH WINGETCARETPOS WINGETCLASSLIST WINGETCLIENTSIZE WINGETHANDLE WINGETPOS "
    b"WINGETPROCESS WINGETSTATE WINGETTEXT WINGETTITLE WINKILL WINLIST WINMENUSELECTITEM WINMINIMIZEALL "
    b"WINMINIMIZEALLUNDO WINMOVE WINSETONTOP WINSETSTATE WINSETTITLE WINSETTRANS WINWAIT WINWAITACTIVE "
    b"WINWAITCLOSE WINWAITNOTACTIVE"
).split())
OPERATORS = tuple(b", = > < <> >= <= ( ) + - / * & [ ] == ^ += -= /= *= &= ? :".split())
_PREFIXES = {0x32: b"@", 0x33: b"$", 0x35: b".", 0x36: b'"'}


@dataclass(frozen=True, slots=True)
class Text:
    """A script turned back into text: the text, and why it ended early (``None``: all its lines)."""

    data: bytes
    problem: str | None


def narrow(seg: bytearray) -> None:
    """UTF-16LE to bytes in place, as ClamAV's ``u2a`` does it: with a byte-order mark (and more than 4
    bytes), every other byte after it; else every other byte if at least a quarter of the first (up
    to 10) characters are ASCII-like (a non-zero low byte, a zero high byte); else nothing."""
    n = len(seg)
    if n < 2:
        return
    if n > 4 and seg[0] == 0xFF and seg[1] == 0xFE and seg[2]:
        low = seg[2:n:2]
    else:
        probe = min(20, n & ~1)
        ascii_like = sum(1 for i in range(0, probe, 2) if seg[i] and not seg[i + 1])
        if ascii_like * 4 < probe:
            return
        low = seg[0:n:2]
    seg[:len(low)] = low


def _g(value: float) -> bytes:
    """C's ``%g`` (glibc writes ``-nan`` for a NaN with its sign bit set)."""
    if math.isnan(value):
        return b"-nan" if math.copysign(1.0, value) < 0 else b"nan"
    return b"%g" % value


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def detokenize(script: bytes, cap: int) -> Text:
    """The text of the EA06 token stream ``script`` (at least 4 bytes), at most ``cap`` bytes of it
    (a longer one ends with the problem ``"too large"``)."""
    size = len(script)
    lines = _u32(script, 0)
    pos = 4
    out = bytearray()
    while lines and pos < size:
        if len(out) > cap:
            return Text(bytes(out[:cap]), "too large")
        op = script[pos]
        pos += 1
        if op in (0, 1):
            if pos >= size - 4:
                return Text(bytes(out), "a name number is cut short")
            number = _u32(script, pos)
            table = KEYWORDS if op == 0 else FUNCTIONS
            if number >= len(table):
                return Text(bytes(out), f"unknown {'keyword' if op == 0 else 'function'} number {number}")
            pos += 4
            out += table[number] + b" "
        elif op == 0x05:
            if pos >= size - 4:
                return Text(bytes(out), "an integer is cut short")
            out += b"0x%08x " % _u32(script, pos)
            pos += 4
        elif op in (0x10, 0x20):
            if size < 8 or pos >= size - 8:
                return Text(bytes(out), "a 64-bit value is cut short")
            if op == 0x10:
                out += b"0x%016x " % int.from_bytes(script[pos:pos + 8], "little")
            else:
                out += _g(struct.unpack_from("<d", script, pos)[0]) + b" "
            pos += 8
        elif 0x30 <= op <= 0x37:
            if pos >= size - 4:
                return Text(bytes(out), "a string length is cut short")
            chars = _u32(script, pos)
            pos += 4
            # ClamAV refuses a string that ends exactly at the end of the data too
            if chars >= 0x8000_0000 or pos + 2 * chars >= size:
                return Text(bytes(out), f"a string of {chars} characters runs past the end")
            out += _PREFIXES.get(op, b"")
            if chars:
                key = bytes((chars & 0xFF, (chars >> 8) & 0xFF)) * chars
                seg = bytearray(xor(script[pos:pos + 2 * chars], key))
                narrow(seg)
                out += seg[:chars]
                pos += 2 * chars
            if op == 0x36:
                out += b'"'
            if op != 0x34:
                out += b" "
        elif 0x40 <= op <= 0x58:
            out += OPERATORS[op - 0x40] + b" "
        elif op == 0x7F:
            lines -= 1
            out += b"\n"
        else:
            return Text(bytes(out), f"unknown token 0x{op:02x}")
    if len(out) > cap:
        return Text(bytes(out[:cap]), "too large")
    return Text(bytes(out), None)
