"Small chat and DPO files for the simulator tests."
import json

def chat_lines(n=12, tag='q'):
    return b'\n'.join(json.dumps({'messages': [{'role': 'system', 'content': 'Du bist hilfsbereit.'},
                                               {'role': 'user', 'content': f'Frage {tag} {i} zum Konto'},
                                               {'role': 'assistant', 'content': f'Antwort {tag} {i}.'}]}).encode() for i in range(n)) + b'\n'

def dpo_lines(n=12):
    return b'\n'.join(json.dumps({'input': {'messages': [{'role': 'user', 'content': f'Frage {i}'}]},
                                  'preferred_output': [{'role': 'assistant', 'content': f'Gute Antwort {i}'}],
                                  'non_preferred_output': [{'role': 'assistant', 'content': f'Schlechte Antwort {i}'}]}).encode()
                      for i in range(n)) + b'\n'
