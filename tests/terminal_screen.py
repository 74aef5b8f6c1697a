"""A small terminal emulator for the tests of what finetune.py shows on a terminal: it plays back the
bytes a program wrote to a pseudo-terminal onto a screen of fixed width, as a VT100 would, and
records every row that wrapped (a line longer than the screen)."""
import re

_CONTROL = re.compile(r'\x1b\[([0-9;]*)([A-Za-z])|([\r\n\b])|([^\x1b\r\n\b]+)')


class Screen:
    def __init__(self, columns):
        self.columns = columns
        self.rows = [[]]
        self.row = self.column = 0
        self.wrapped_rows = []  # rows a line ran past the right edge of, into the next row

    def play(self, text):
        for match in _CONTROL.finditer(text):
            argument, command, control, printable = match.groups()
            if command is not None:
                self._escape(argument, command)
            elif control == '\r':
                self.column = 0
            elif control == '\n':
                self._next_row()
            elif control == '\b':
                self.column = max(self.column - 1, 0)
            else:
                for character in printable:
                    self._put(character)
        return self

    def _escape(self, argument, command):
        if command == 'K' and argument in ('', '0'):  # erase from the cursor to the end of the row
            del self.rows[self.row][self.column:]
        else:
            raise AssertionError(f'unexpected escape sequence ESC[{argument}{command}')

    def _next_row(self):
        self.row += 1
        self.column = 0
        if self.row == len(self.rows):
            self.rows.append([])

    def _put(self, character):
        if self.column == self.columns:  # the terminal wraps: the line goes on in the next row
            self.wrapped_rows.append(self.row)
            self._next_row()
        cells = self.rows[self.row]
        cells.extend(' ' * (self.column + 1 - len(cells)))
        cells[self.column] = character
        self.column += 1

    @property
    def lines(self):
        """The screen's rows as text, trailing blanks removed, the last row left out when empty."""
        lines = [''.join(cells).rstrip() for cells in self.rows]
        return lines[:-1] if lines and not lines[-1] else lines
